"""tpu_scripts/gke_jobset.py and gke_launch.sh: the JobSet manifest validates against the JobSet
CRD's schema (vendored in tests/data/jobset/), every pod of N slices x M hosts resolves to the
environment JAX needs (the process ids JAX's GKE cluster detection computes from it), and bad
arguments exit 2 with one line."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATOR = REPO_ROOT / "tpu_scripts" / "gke_jobset.py"
LAUNCHER = REPO_ROOT / "tpu_scripts" / "gke_launch.sh"
CRD = REPO_ROOT / "tests" / "data" / "jobset" / "jobset.x-k8s.io_jobsets.yaml"
V5P_GIN = "gin/experiments/alexatm_20b_v5p256.gin"
BASE = ["--name", "alexatm-20b", "--image", "us-docker.pkg.dev/p/r/alexatm:1"]
BASE += ["--gin_file", V5P_GIN, "--model_dir", "gs://bucket/alexatm-20b/run1"]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gke_jobset", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gke_jobset = _load_generator()


def manifest(accelerator_type: str, num_slices: int, *extra: str) -> dict:
    """The manifest gke_jobset.py writes for BASE + these arguments (run in-process)."""
    argv = [*BASE, "--accelerator_type", accelerator_type, "--num_slices", str(num_slices)]
    args, bindings = gke_jobset.parse_args([*argv, *extra])
    return json.loads(json.dumps(gke_jobset.manifest(args, bindings)))


@functools.lru_cache(maxsize=1)
def strict_jobset_schema() -> dict:
    """The CRD's v1alpha2 openAPIV3Schema, with unknown fields refused wherever the schema lists
    an object's properties (as `kubectl apply` with strict field validation does)."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def close(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema["properties"]["spec"])
    return schema


@pytest.mark.parametrize("accelerator_type, num_slices", [("v5p-256", 2), ("v5p-8", 1)])
def test_manifest_validates_against_the_jobset_crd_schema(accelerator_type, num_slices):
    jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[test]'")
    document = manifest(accelerator_type, num_slices)
    jsonschema.validate(document, strict_jobset_schema())


def test_schema_check_catches_a_misspelt_field():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[test]'")
    document = manifest("v5p-8", 1)
    document["spec"]["replicatedJobs"][0]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(document, strict_jobset_schema())


def test_manifest_has_one_job_per_slice_and_a_pod_per_host():
    document = manifest("v5p-256", 4, "--gin.TRAIN_STEPS=100")
    assert document["metadata"]["annotations"] == {
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
    }
    (job,) = document["spec"]["replicatedJobs"]
    assert job["replicas"] == 4
    spec = job["template"]["spec"]
    assert spec["parallelism"] == spec["completions"] == 32  # v5p-256: 128 chips, 4 per host
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
        "cloud.google.com/gke-tpu-topology": "4x4x8",
    }
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"google.com/tpu": 4}
    assert container["command"] == [
        "alexatm-train",
        "--gin_file",
        V5P_GIN,
        "--model_dir",
        "gs://bucket/alexatm-20b/run1",
        "--gin.TRAIN_STEPS=100",
    ]


def _field(path: str, job_index: int, pod_index: int) -> str:
    return {
        "metadata.annotations['jobset.sigs.k8s.io/job-index']": str(job_index),
        "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(pod_index),
    }[path]


def pod_environment(document: dict, job_index: int, pod_index: int) -> dict[str, str]:
    """The environment Kubernetes gives pod `pod_index` of Job `job_index`: downward-API fields
    substituted, then $(VAR) expanded from the variables defined before it."""
    (job,) = document["spec"]["replicatedJobs"]
    (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            env[item["name"]] = _field(
                item["valueFrom"]["fieldRef"]["fieldPath"], job_index, pod_index
            )
        else:
            env[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"]
            )
    return env


def pod_dns_name(document: dict, job_index: int, pod_index: int) -> str:
    """The DNS name JobSet gives a pod: JOBSET-RJOB-J-P.SUBDOMAIN."""
    name = document["metadata"]["name"]
    (job,) = document["spec"]["replicatedJobs"]
    subdomain = document["spec"]["network"]["subdomain"]
    assert document["spec"]["network"]["enableDNSHostnames"] is True
    return f"{name}-{job['name']}-{job_index}-{pod_index}.{subdomain}"


@pytest.mark.parametrize(
    "accelerator_type, slices, hosts", [("v5p-16", 2, 2), ("v5p-64", 4, 8), ("v5p-8", 1, 1)]
)
def test_every_pod_gets_a_distinct_process_id_and_the_same_coordinator(
    accelerator_type, slices, hosts, monkeypatch
):
    from jax._src.clusters.cloud_tpu_cluster import GkeTpuCluster

    document = manifest(accelerator_type, slices)
    seen = {}
    for job_index in range(slices):
        for pod_index in range(hosts):
            env = pod_environment(document, job_index, pod_index)
            workers = env["TPU_WORKER_HOSTNAMES"].split(",")
            assert workers[pod_index] == pod_dns_name(document, job_index, pod_index)
            assert env["MEGASCALE_COORDINATOR_ADDRESS"] == pod_dns_name(document, 0, 0)
            assert env["MEGASCALE_NUM_SLICES"] == str(slices)
            assert env["MEGASCALE_SLICE_ID"] == str(job_index)
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            process_id = GkeTpuCluster.get_process_id()  # what jax.distributed computes
            assert GkeTpuCluster.get_process_count() == slices * hosts
            seen[process_id] = (job_index, pod_index)
    assert sorted(seen) == list(range(slices * hosts))
    assert all(seen[p] == divmod(p, hosts) for p in seen)  # slice-major, as JAX numbers them


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_dir", "/tmp/run"], "--model_dir must be gs://BUCKET/PATH"),
        (["--num_slices", "0"], "--num_slices must be >= 1, got 0"),
        (["--accelerator_type", "v9-8"], "unknown TPU slice 'v9-8'"),
        (["--name", "Bad_Name"], "--name must be 1-40 lower-case"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gke_jobset.main([*BASE, "--accelerator_type", "v5p-256", *args])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("gke_jobset.py: error: ") and message in line


def test_an_unwritable_output_exits_1_with_one_line(tmp_path, capsys):
    target = str(tmp_path / "missing" / "js.json")
    assert gke_jobset.main([*BASE, "--accelerator_type", "v5p-8", "--output", target]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"gke_jobset.py: error: cannot write {target}")


def launch(*args: str) -> subprocess.CompletedProcess:
    """Runs gke_launch.sh --dry-run ARGS with this Python for the generator."""
    return subprocess.run(
        ["bash", str(LAUNCHER), "--dry-run", "--python", sys.executable, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_launcher_dry_run_writes_the_manifest_and_prints_kubectl_apply(tmp_path):
    out = tmp_path / "js.json"
    proc = launch(
        *BASE, "--accelerator_type", "v5p-256", "--num_slices", "2", "--manifest", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert commands[0][0] == sys.executable
    assert commands[0][1].endswith("tpu_scripts/gke_jobset.py")
    assert commands[0][-2:] == ["--output", str(out)]
    assert commands[-1] == ["kubectl", "apply", "-f", str(out)]
    assert json.loads(out.read_text())["spec"]["replicatedJobs"][0]["replicas"] == 2


def test_launcher_stops_with_the_generator_line_on_bad_arguments(tmp_path):
    proc = launch(
        *BASE[:-1], "/tmp/run", "--accelerator_type", "v5p-256", "--manifest", str(tmp_path / "m")
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("gke_jobset.py: error: --model_dir")
    assert "kubectl" not in proc.stdout and not (tmp_path / "m").exists()
