"""`alexatm-plan`: will a gin-configured training job fit, and how fast could it run?

    alexatm-plan --gin_file gin/experiments/alexatm_20b_v5p256.gin --topology v5p-256 \\
        [--num_slices N [--dcn_gbps_per_host G] [--dcn_overlap F]] \\
        [--timing_layers 2 | --no_step_time] [--no_eval_hooks_cost] [--gin.KEY=VALUE ...] \\
        [--format text|json]
    alexatm-plan --gin_file gin/experiments/alexatm_20b_v5p256.gin --devices 128 \\
        --peak_tflops 459 --mfu 0.45 --device_memory_gib 95 [--gin.KEY=VALUE ...] \\
        [--extrapolate_from_layers 2] [--format text|json] [--json_out plan.json]

With --topology the TPU compiler (libtpu, on this CPU) compiles the job's train step for the
compile-only devices of a TPU slice: per-chip memory is the TPU's own buffer assignment, and the
step time is the TPU cost model's; with --num_slices N the devices span N slices and the report
adds the gradient all-reduce's traffic between slices (DCN), which the cost model does not price
(`alexatm_jax.dcn`). With --devices it emulates N CPU devices and compiles with
XLA:CPU; the step time then follows from a peak FLOP/s and an assumed MFU. Nothing is allocated
either way. See `alexatm_jax.planning` for what each number means. With --eval it plans
evaluation's programs instead (`alexatm_jax.cli.plan_eval`). On one TPU slice the job's
FewShotEval hooks (train.eval_hooks) are priced too, on the training mesh, with their share of
the wall time (`alexatm_jax.eval_planning.training_eval_cost`; --no_eval_hooks_cost skips it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from alexatm_jax.cli.gin_flags import gin_bindings
from alexatm_jax.cli.plan_eval import add_eval_arguments, check_eval_arguments, run_eval_plan
from alexatm_jax.cli.plan_report import format_text, report

if TYPE_CHECKING:  # importing planning imports JAX, which must wait for emulate_cpu_devices
    from alexatm_jax.eval_planning.training_eval_cost import HookCost, HookWork
    from alexatm_jax.planning import Plan, StepTimeEstimate
    from alexatm_jax.training.config import TrainConfig

PLAN_MODEL_DIR_BINDING = "MODEL_DIR = ''"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (gin bindings `--gin.KEY=VALUE` are taken from the leftovers)."""
    parser = argparse.ArgumentParser(
        prog="alexatm-plan",
        description="Compile a gin-configured train step ahead of time, with the TPU compiler "
        "for a TPU slice (--topology) or XLA:CPU on N emulated devices (--devices), "
        "and report per-device memory, FLOPs per step and the step time. "
        "Extra arguments --gin.KEY=VALUE are gin bindings applied after the files, "
        "e.g. --gin.MESH_FSDP=64 --gin.BATCH_SIZE=1024.",
        epilog="XLA's C++ warnings (e.g. SPMD resharding notes) are hidden; set "
        "TF_CPP_MIN_LOG_LEVEL=0 to see them.",
    )
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin file (repeatable), e.g. gin/experiments/alexatm_20b_v5p256.gin",
    )
    parser.add_argument(
        "--gin_search_path",
        action="append",
        default=[],
        help="extra directory to search for gin files and their includes",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--devices",
        type=int,
        default=None,
        help="number of devices to plan for (emulated on the CPU, compiled by "
        "XLA:CPU); the mesh sizes of the gin files must multiply to it "
        "(-1 takes the rest)",
    )
    target.add_argument(
        "--topology",
        default=None,
        metavar="NAME",
        help="compile with the TPU compiler for a TPU slice: a Cloud TPU type "
        "(v4-8 ... v4-4096, v5p-8 ... v5p-12288, v5litepod-N, v6e-N) or a "
        "topology such as v5p:4x4x8; needs libtpu "
        "(pip install -e '.[tpu-aot]'). Or h100-NODESxGPUS (e.g. h100-16x8): "
        "XLA:GPU, memory only, needs the CUDA plugin ('.[gpu-aot]')",
    )
    _add_multislice_arguments(parser)
    _add_estimate_arguments(parser)
    add_eval_arguments(parser)
    return parser


def _add_multislice_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a multi-slice TPU plan: slices, and the DCN term's bandwidth and overlap."""
    parser.add_argument(
        "--num_slices",
        type=int,
        default=1,
        metavar="N",
        help="with a TPU --topology: plan for N such slices joined by the data-center network "
        "(DCN); the mesh lays MeshConfig.dcn_* axes across them, by default 'replica' "
        "(default 1)",
    )
    parser.add_argument(
        "--dcn_gbps_per_host",
        type=float,
        default=None,
        metavar="G",
        help="DCN bandwidth one host sends at, in Gbit/s, for the DCN term (default: Google's "
        "per-chip figure x chips per host; v5p: 50 x 4 = 200; other generations need it)",
    )
    parser.add_argument(
        "--dcn_overlap",
        type=float,
        default=None,
        metavar="F",
        help="fraction in [0, 1] of the last microbatch's backward pass that the gradient "
        "all-reduce over DCN can overlap (default 0.5, an assumption)",
    )


def _add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the step-time estimate, the memory verdict and the report's output."""
    parser.add_argument(
        "--timing_layers",
        type=int,
        default=2,
        metavar="K",
        help="with --topology: the step time comes from the TPU cost model of "
        "the layers compiled unscanned at (K,K), (2K,K), (K,2K) encoder/"
        "decoder layers, one microbatch, extrapolated (default 2)",
    )
    parser.add_argument(
        "--no_step_time",
        action="store_true",
        help="with --topology: skip the step-time compiles (memory only; no few-shot "
        "evaluation cost either)",
    )
    parser.add_argument(
        "--no_eval_hooks_cost",
        action="store_true",
        help="with a one-slice TPU --topology: do not plan the cost of the job's FewShotEval "
        "hooks (train.eval_hooks), which compiles their evaluation programs on the training "
        "mesh and reports their share of the run's wall time",
    )
    parser.add_argument(
        "--extrapolate_from_layers",
        type=int,
        default=None,
        metavar="K",
        help="compile with (K,K), (2K,K) and (K,2K) encoder/decoder layers and "
        "extrapolate linearly to the configured depth (faster for deep "
        "unscanned models; the report marks extrapolated numbers). Use "
        "K >= 2: a one-layer stack compiles differently",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak dense TFLOP/s of one target device (bf16: TPU v5p 459, "
        "v4 275, H100 989, A100 312); needed for the step time",
    )
    parser.add_argument(
        "--mfu",
        type=float,
        default=None,
        help="with --devices: assumed model FLOPs utilisation in (0, 1] (default "
        "0.45; the paper reports up to 49%% on A100s)",
    )
    parser.add_argument(
        "--device_memory_gib",
        type=float,
        default=None,
        help="memory of one target device in GiB (TPU v5p 95, v4 32, H100 80): "
        "the report then says whether the compiled step fits",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="what to print on stdout (default text)",
    )
    parser.add_argument("--json_out", default=None, help="also write the JSON report here")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parsed options and gin bindings; exits with a usage error naming what was wrong."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.BATCH_SIZE=1024")
    if not args.gin_file:
        parser.error(
            "give at least one --gin_file, e.g. --gin_file=gin/experiments/alexatm_20b_v5p256.gin"
        )
    if args.devices is not None and args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    args.target = None
    if args.topology is not None:
        from alexatm_jax.gpu_topology import parse_gpu_target
        from alexatm_jax.tpu_topology import parse_tpu_target

        try:
            args.target = parse_gpu_target(args.topology) or parse_tpu_target(args.topology)
        except ValueError as error:
            parser.error(f"--topology: {error}")
        if args.mfu is not None:
            parser.error(
                "--mfu assumes an MFU; with --topology the TPU compiler's cost model "
                "estimates the step time: drop --mfu"
            )
        if args.timing_layers < 1:
            parser.error(f"--timing_layers must be >= 1, got {args.timing_layers}")
        args.peak_tflops = args.peak_tflops or args.target.peak_bf16_tflops
        args.device_memory_gib = args.device_memory_gib or args.target.hbm_gib
    _check_multislice_arguments(parser, args)
    args.mfu = 0.45 if args.mfu is None else args.mfu
    if args.extrapolate_from_layers is not None and args.extrapolate_from_layers < 1:
        parser.error(f"--extrapolate_from_layers must be >= 1, got {args.extrapolate_from_layers}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak_tflops must be > 0, got {args.peak_tflops}")
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.device_memory_gib is not None and args.device_memory_gib <= 0:
        parser.error(f"--device_memory_gib must be > 0, got {args.device_memory_gib}")
    if args.eval is not None:
        check_eval_arguments(parser, args)
    return args, bindings


def _check_multislice_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--num_slices needs a TPU --topology; the DCN term needs a bandwidth and an overlap."""
    from alexatm_jax.dcn import DEFAULT_OVERLAP
    from alexatm_jax.tpu_topology import TpuTarget

    if args.num_slices < 1:
        parser.error(f"--num_slices must be >= 1, got {args.num_slices}")
    if args.num_slices > 1 and not isinstance(args.target, TpuTarget):
        parser.error("--num_slices needs a TPU --topology (e.g. --topology v5p-256)")
    if args.dcn_gbps_per_host is not None and args.dcn_gbps_per_host <= 0:
        parser.error(f"--dcn_gbps_per_host must be > 0, got {args.dcn_gbps_per_host}")
    if args.num_slices > 1 and args.dcn_gbps_per_host is None and not args.target.chip.dcn_gbps:
        parser.error(
            f"--num_slices: no documented DCN bandwidth for {args.target.chip.generation} "
            "here; give --dcn_gbps_per_host"
        )
    args.dcn_overlap = DEFAULT_OVERLAP if args.dcn_overlap is None else args.dcn_overlap
    if not 0 <= args.dcn_overlap <= 1:
        parser.error(f"--dcn_overlap must be in [0, 1], got {args.dcn_overlap}")


def emulate_cpu_devices(num_devices: int) -> None:
    """Make JAX run on `num_devices` CPU devices (whatever accelerators the machine has); must
    run before anything initialises JAX. Raises RuntimeError if JAX was initialised already."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices)
    if jax.device_count() != num_devices:
        raise RuntimeError(
            f"JAX was initialised before alexatm-plan could ask for "
            f"{num_devices} CPU devices (it has {jax.device_count()}); run "
            "alexatm-plan in a fresh process"
        )


def parse_gin_config(
    files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]
) -> None:
    """Parse the gin files; the SeqIO task registry is imported only if the files bind it.

    A plan writes nothing, so a required MODEL_DIR the files leave unset is bound to '' (the
    user's bindings still win)."""
    from alexatm_jax import gin_registry

    with_model_dir = [PLAN_MODEL_DIR_BINDING, *bindings]
    try:
        gin_registry.parse_gin(files, with_model_dir, search_paths)
    except ValueError as error:
        if "sets the macro MODEL_DIR" in str(error):  # the files do not use MODEL_DIR
            gin_registry.parse_gin(files, bindings, search_paths)
        elif "No configurable matching" in str(error):
            import tasks  # noqa: F401  (registers the data configurables, imports TensorFlow)

            gin_registry.parse_gin(files, with_model_dir, search_paths)
        else:
            raise


def train_config_from_gin() -> TrainConfig:
    """The TrainConfig of the parsed gin configuration."""
    from alexatm_jax import gin_registry

    return gin_registry.train_config_from_gin()


def target_devices(args: argparse.Namespace) -> list[Any] | None:
    """Start JAX for the plan's target and return its devices (None: the emulated CPU devices).
    Raises RuntimeError naming the problem."""
    if args.target is None:
        emulate_cpu_devices(args.devices)
        return None
    os.environ["JAX_PLATFORMS"] = "cpu"  # the target compiler is used through its topology only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from alexatm_jax.gpu_topology import GpuTarget, gpu_devices

    if isinstance(args.target, GpuTarget):
        return gpu_devices(args.target)
    from alexatm_jax.tpu_topology import (
        libtpu_problem,
        prepare_compile_only_environment,
        topology_devices,
    )

    problem = libtpu_problem()
    if problem:
        raise RuntimeError(f"--topology needs the TPU compiler: {problem}")
    prepare_compile_only_environment(args.target)
    return topology_devices(args.target, args.num_slices)


def adapt_job_to_target(job: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """cuDNN attention needs the cuDNN library to compile; without it a GPU plan uses XLA's
    attention, and the report says so."""
    from alexatm_jax.gpu_topology import GpuTarget, cudnn_problem

    args.target_notes = []
    problem = cudnn_problem()
    if (
        isinstance(args.target, GpuTarget)
        and job.model_config.attention_impl == "cudnn"
        and problem
    ):
        args.target_notes.append(
            f"attention_impl 'cudnn' could not be compiled here "
            f"({problem}): planned as 'dot_product'"
        )
        config = job.model_config.replace(attention_impl="dot_product")
        return dataclasses.replace(job, model_config=config)
    return job


def few_shot_work(
    job: TrainConfig, devices: list[Any] | None, args: argparse.Namespace
) -> list[HookWork]:
    """The job's FewShotEval hooks to price (`alexatm_jax.eval_planning.training_eval_cost`):
    none unless the target is one TPU slice with its step time and --no_eval_hooks_cost is off."""
    from alexatm_jax.tpu_topology import TpuTarget

    if args.no_eval_hooks_cost or args.no_step_time or not isinstance(args.target, TpuTarget):
        return []
    from alexatm_jax.eval_planning import training_eval_cost

    if args.num_slices == 1:
        return training_eval_cost.hook_work(job, devices)
    if training_eval_cost.few_shot_hooks(job):
        print(
            "alexatm-plan: note: FewShotEval hooks are priced with --num_slices 1 only",
            file=sys.stderr,
        )
    return []


def run_plan(
    job: TrainConfig, devices: list[Any] | None, args: argparse.Namespace
) -> tuple[Plan, StepTimeEstimate | None, list[HookCost]]:
    """The plan, for a TPU target the cost model's step time, and for one TPU slice the cost of
    the job's FewShotEval hooks (`few_shot_work`), with a progress bar."""
    from tqdm import tqdm

    from alexatm_jax.planning import (
        StepTimeUnavailable,
        estimate_step_time,
        make_plan,
        timing_depths,
    )

    timed = args.target is not None and args.target.has_cost_model and not args.no_step_time
    timing_compiles = len(timing_depths(job, args.timing_layers)) if timed else 0
    hooks = few_shot_work(job, devices, args)
    stages = 3 * ((1 if args.extrapolate_from_layers is None else 3) + timing_compiles)
    stages += sum(work.compiles(args.timing_layers) for work in hooks)
    with tqdm(total=stages, desc="plan", unit="stage", file=sys.stderr) as bar:

        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        plan = make_plan(
            job,
            devices=devices,
            extrapolate_from_layers=args.extrapolate_from_layers,
            progress=progress,
        )
        estimate = None
        try:
            if timed:
                estimate = estimate_step_time(
                    job,
                    devices,
                    layers=args.timing_layers,
                    peak_flops_per_device=args.peak_tflops * 1e12,
                    progress=progress,
                )
        except StepTimeUnavailable as error:  # the memory plan is kept and reported
            print(f"alexatm-plan: warning: no step time: {error}", file=sys.stderr)
        step_seconds = estimate.seconds if estimate else None
        costs = [
            work.cost(
                devices,
                args.target,
                step_seconds=step_seconds,
                optimizer_state_bytes=plan.optimizer_state_bytes,
                layers=args.timing_layers,
                progress=progress,
            )
            for work in hooks
        ]
    return plan, estimate, costs


def dcn_traffic(plan: Plan, devices: list[Any] | None, args: argparse.Namespace) -> Any:
    """The step's gradient all-reduce between slices (`alexatm_jax.dcn.DcnTraffic`) for a TPU
    target; None for other targets."""
    from alexatm_jax.dcn import gradient_allreduce_traffic
    from alexatm_jax.partitioning import build_mesh
    from alexatm_jax.tpu_topology import TpuTarget

    if not isinstance(args.target, TpuTarget):
        return None
    mesh = build_mesh(plan.config.mesh_config, devices)
    gbps = args.dcn_gbps_per_host
    if gbps is None and args.target.chip.dcn_gbps:
        hosts = len({d.process_index for d in mesh.devices.flat})
        gbps = args.target.chip.dcn_gbps * mesh.devices.size / hosts
    return gradient_allreduce_traffic(mesh, plan.num_params, gbps)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `alexatm-plan`; returns the exit status."""
    args, bindings = parse_args(argv)
    if args.eval is not None:
        return run_eval_plan(args, bindings)
    try:
        devices = target_devices(args)
    except RuntimeError as error:
        print(f"alexatm-plan: error: {error}", file=sys.stderr)
        return 2
    try:
        parse_gin_config(args.gin_file, bindings, args.gin_search_path)
        job = train_config_from_gin()
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        print(f"alexatm-plan: error: gin configuration: {error}", file=sys.stderr)
        return 2
    job = adapt_job_to_target(job, args)
    from alexatm_jax.planning import DoesNotFit

    try:
        plan, estimate, few_shot = run_plan(job, devices, args)
    except ValueError as error:
        print(f"alexatm-plan: error: {error}", file=sys.stderr)
        return 2
    except DoesNotFit as error:
        print(
            f"alexatm-plan: {' + '.join(args.gin_file)} on {args.topology}: DOES NOT FIT: {error}"
        )
        return 0
    result = report(plan, args, estimate, dcn_traffic(plan, devices, args), few_shot)
    print(json.dumps(result, indent=2) if args.format == "json" else format_text(result))
    if args.json_out:
        path = pathlib.Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"alexatm-plan: JSON report written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
