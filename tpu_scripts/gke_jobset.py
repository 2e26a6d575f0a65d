#!/usr/bin/env python3
"""Write the JobSet manifest (JSON, which `kubectl apply -f` reads as YAML) that runs
alexatm-train on N TPU slices of a GKE cluster, one Job per slice:

    python tpu_scripts/gke_jobset.py --name alexatm-20b --accelerator_type v5p-256 \\
        --num_slices 2 --image IMAGE --gin_file gin/experiments/alexatm_20b_v5p256.gin \\
        --model_dir gs://BUCKET/alexatm-20b/run1 [--gin.KEY=VALUE ...] [--output FILE]

Each pod is one TPU host. JAX (`jax.distributed.initialize()`, as alexatm-train calls it on a
TPU VM) finds the job from the environment set here: TPU_WORKER_ID (the pod's completion index
in its slice), TPU_WORKER_HOSTNAMES (its slice's pods, by the JobSet's headless-service DNS
names), MEGASCALE_SLICE_ID (the Job's index in the JobSet), MEGASCALE_NUM_SLICES and
MEGASCALE_COORDINATOR_ADDRESS (pod 0 of slice 0). Process id = slice id x hosts per slice +
worker id; the JAX coordinator is that pod, port 8482 (JAX's default for Cloud TPU).
Exit status: 0 written, 2 bad arguments, 1 the output could not be written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

# Run from a checkout (python3 tpu_scripts/gke_jobset.py): the repository's package first.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from alexatm_jax.tpu_topology import parse_tpu_target  # noqa: E402

PROG = "gke_jobset.py"
REPLICATED_JOB = "slice"
MEGASCALE_PORT = 8080  # the port XPK and GKE's multislice examples open for megascale (DCN)
TPU_RUNTIME_PORT = 8471
CHIPS_PER_HOST = 4  # GKE's multi-host TPU machine types (ct4p/ct5p/ct5lp/ct6e-...-4t)
GKE_ACCELERATORS = {  # node label cloud.google.com/gke-tpu-accelerator per generation
    "v4": "tpu-v4-podslice",
    "v5p": "tpu-v5p-slice",
    "v5e": "tpu-v5-lite-podslice",
    "v6e": "tpu-v6e-slice",
}
JOB_INDEX = "metadata.annotations['jobset.sigs.k8s.io/job-index']"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# A pod's hostname is NAME-slice-J-P (63 characters at most): NAME leaves room for J and P.
NAME_PATTERN = re.compile(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?")


class OneLineErrors(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (gin bindings `--gin.KEY=VALUE` are taken from the leftovers)."""
    parser = OneLineErrors(
        prog=PROG,
        description="Write a JobSet manifest that runs alexatm-train on N TPU slices of a GKE "
        "cluster (one Job per slice, one pod per TPU host). Extra arguments --gin.KEY=VALUE "
        "are passed to alexatm-train.",
    )
    parser.add_argument("--name", required=True, help="JobSet name (lower case, <= 40 chars)")
    parser.add_argument(
        "--accelerator_type", required=True, help="TPU type of one slice, e.g. v5p-256"
    )
    parser.add_argument("--num_slices", type=int, default=1, help="slices (default 1)")
    parser.add_argument("--image", required=True, help="container image with alexatm-jax")
    parser.add_argument(
        "--gin_file", action="append", default=[], required=True, help="gin file (repeatable)"
    )
    parser.add_argument("--model_dir", required=True, help="gs://BUCKET/PATH for checkpoints")
    parser.add_argument("--namespace", default="default", help="Kubernetes namespace")
    parser.add_argument(
        "--workdir", default=None, help="working directory in the image (gin paths are relative)"
    )
    parser.add_argument(
        "--max_restarts", type=int, default=0, help="JobSet restarts after a failure (default 0)"
    )
    parser.add_argument("--output", default="-", help="manifest file (default: stdout)")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parsed options and gin bindings; exits 2 with one line naming what was wrong."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [word for word in rest if not re.fullmatch(r"--gin\.[^=]+=.*", word)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (gin bindings: --gin.KEY=VALUE)")
    if not NAME_PATTERN.fullmatch(args.name):
        parser.error(
            f"--name must be 1-40 lower-case letters, digits or '-', starting with a letter, "
            f"got {args.name!r}"
        )
    try:
        args.target = parse_tpu_target(args.accelerator_type)
    except ValueError as error:
        parser.error(f"--accelerator_type: {error}")
    if args.num_slices < 1:
        parser.error(f"--num_slices must be >= 1, got {args.num_slices}")
    if args.max_restarts < 0:
        parser.error(f"--max_restarts must be >= 0, got {args.max_restarts}")
    if not re.fullmatch(r"gs://[^/]+/.+", args.model_dir):
        parser.error(
            f"--model_dir must be gs://BUCKET/PATH (every host of every slice writes its "
            f"shards to it), got {args.model_dir!r}"
        )
    return args, rest


def hosts_per_slice(num_chips: int) -> int:
    """TPU VMs (= pods) of one slice of `num_chips` chips."""
    return max(1, num_chips // CHIPS_PER_HOST)


def pod_hostname(name: str, job_index: int | str, pod_index: int | str) -> str:
    """A pod's DNS name behind the JobSet's headless service (subdomain NAME)."""
    return f"{name}-{REPLICATED_JOB}-{job_index}-{pod_index}.{name}"


def environment(name: str, num_slices: int, hosts: int) -> list[dict[str, Any]]:
    """The container's environment: what jax.distributed needs across slices (Kubernetes
    expands $(VAR) from variables defined earlier in the list)."""
    workers = ",".join(pod_hostname(name, "$(MEGASCALE_SLICE_ID)", p) for p in range(hosts))
    return [
        {"name": "MEGASCALE_SLICE_ID", "valueFrom": {"fieldRef": {"fieldPath": JOB_INDEX}}},
        {"name": "TPU_WORKER_ID", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        {"name": "TPU_WORKER_HOSTNAMES", "value": workers},
        {"name": "MEGASCALE_NUM_SLICES", "value": str(num_slices)},
        {"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": pod_hostname(name, 0, 0)},
        {"name": "MEGASCALE_PORT", "value": str(MEGASCALE_PORT)},
    ]


def container(args: argparse.Namespace, bindings: Sequence[str], hosts: int) -> dict[str, Any]:
    """The trainer container of every pod: one TPU host's chips, the command, the env."""
    chips = min(CHIPS_PER_HOST, args.target.num_chips)
    command = ["alexatm-train"]
    for gin_file in args.gin_file:
        command += ["--gin_file", gin_file]
    command += ["--model_dir", args.model_dir, *bindings]
    spec: dict[str, Any] = {
        "name": "alexatm-train",
        "image": args.image,
        "command": command,
        "env": environment(args.name, args.num_slices, hosts),
        "ports": [{"containerPort": MEGASCALE_PORT}, {"containerPort": TPU_RUNTIME_PORT}],
        "resources": {"limits": {"google.com/tpu": chips}, "requests": {"google.com/tpu": chips}},
    }
    if args.workdir:
        spec["workingDir"] = args.workdir
    return spec


def manifest(args: argparse.Namespace, bindings: Sequence[str]) -> dict[str, Any]:
    """The JobSet: `num_slices` replicas of one Indexed Job with a pod per host of the slice."""
    target = args.target
    hosts = hosts_per_slice(target.num_chips)
    pod_spec = {
        "restartPolicy": "Never",
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "nodeSelector": {
            "cloud.google.com/gke-tpu-accelerator": GKE_ACCELERATORS[target.chip.generation],
            "cloud.google.com/gke-tpu-topology": "x".join(map(str, target.shape)),
        },
        "containers": [container(args, bindings, hosts)],
    }
    job = {
        "parallelism": hosts,
        "completions": hosts,
        "completionMode": "Indexed",
        "backoffLimit": 0,
        "template": {"spec": pod_spec},
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {
            "name": args.name,
            "namespace": args.namespace,
            "annotations": {
                "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
            },
        },
        "spec": {
            "failurePolicy": {"maxRestarts": args.max_restarts},
            "network": {"enableDNSHostnames": True, "subdomain": args.name},
            "replicatedJobs": [
                {"name": REPLICATED_JOB, "replicas": args.num_slices, "template": {"spec": job}}
            ],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args, bindings = parse_args(argv)
    text = json.dumps(manifest(args, bindings), indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w") as out:
            out.write(text)
    except OSError as error:
        print(f"{PROG}: error: cannot write {args.output}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
