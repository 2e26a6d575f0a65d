"""`alexatm-plan --eval`: evaluation's programs on a TPU slice, per layout, planned by the TPU
compiler on this CPU.

    alexatm-plan --eval superglue,xnli --gin_file gin/experiments/alexatm_20b_eval.gin \\
        --topology v5p-8 [--eval_layouts data=4 fsdp=4 ...] [--eval_batch_size N] \\
        [--eval_buckets 256:64 1024:256] [--eval_max_new_tokens 63] \\
        [--eval_memory extrapolated|full_depth] [--timing_layers K] [--json_out F]

For every layout (default: every data x fsdp x tensor mesh of the slice whose parameters fit a
chip) it compiles prefill, one decoder step and scoring at each length bucket
(`alexatm_jax.eval_planning.layout_plan`), and prints per chip memory, the cost model's
seconds, the roofline and their ratio. The gin gives the model (ModelConfig) and the batch
(BATCH_SIZE); its MESH_FSDP / MESH_TENSOR / PARTITION_RULES are the layout marked "gin".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from typing import TYPE_CHECKING, Any

from alexatm_jax.cli.errors import EXIT_FAILED, EXIT_USAGE

if TYPE_CHECKING:  # the planning modules import JAX
    from alexatm_jax.eval_planning.layout_plan import LayoutPlan
    from alexatm_jax.eval_planning.programs import Layout, PlannedPrograms, ProgramShape
    from alexatm_jax.model.config import ModelConfig

PROG = "alexatm-plan"
DEFAULT_BUCKETS = ((256, 64), (1024, 256))  # (input, target) positions


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of evaluation planning (`--eval` switches alexatm-plan to it)."""
    group = parser.add_argument_group("evaluation planning (--eval, with a TPU --topology)")
    group.add_argument(
        "--eval",
        default=None,
        metavar="SUITE_OR_TASK[,...]",
        help="plan evaluation instead of training: the suites or tasks of alexatm-eval, "
        "comma-separated (e.g. superglue,xnli); compiles prefill, one decoder step and scoring "
        "per layout and length bucket",
    )
    group.add_argument(
        "--eval_layouts",
        nargs="+",
        default=None,
        metavar="LAYOUT",
        help="layouts to plan, e.g. data=4 fsdp=4 tensor=4 data=2,tensor=2 (default: every "
        "layout of the slice whose parameters fit a chip)",
    )
    group.add_argument(
        "--eval_batch_size",
        type=int,
        default=None,
        metavar="N",
        help="rows per compiled call (default: the gin's BATCH_SIZE)",
    )
    group.add_argument(
        "--eval_buckets",
        nargs="+",
        default=None,
        metavar="INPUT:TARGET",
        help="length buckets to compile: prefill and decoder step at INPUT input positions, "
        "scoring at INPUT inputs and TARGET targets (default 256:64 1024:256, capped at the "
        "model's max_positions)",
    )
    group.add_argument(
        "--eval_max_new_tokens",
        type=int,
        default=63,
        metavar="N",
        help="generated tokens, the decoder cache length of prefill and the decoder step "
        "(default 63, alexatm-eval's)",
    )
    group.add_argument(
        "--eval_memory",
        choices=("extrapolated", "full_depth"),
        default="extrapolated",
        help="per chip memory from the timing compiles, extrapolated in depth with the "
        "parameters exact (default), or from one more compile per bucket at the model's depth",
    )
    group.add_argument(
        "--eval_data_dir",
        default=None,
        metavar="DIR",
        help="alexatm-eval's --data_dir: the suite's prompts are built and counted from it "
        "(with --eval_vocab); tasks without data there, or without this flag, take the paper's "
        "set sizes and typical lengths (docs/paper_facts.md)",
    )
    group.add_argument(
        "--eval_vocab",
        default=None,
        metavar="SPM",
        help="the SentencePiece model that encodes the suite (the checkpoint's "
        "tokenizer/spiece.model); needed with --eval_data_dir",
    )


def check_eval_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses (exit 2) what --eval cannot plan; sets args.eval_tasks, args.eval_layouts (Layouts
    or None) and args.eval_buckets ((input, target) pairs or None)."""
    from alexatm_jax.tpu_topology import TpuTarget

    if not isinstance(args.target, TpuTarget):
        parser.error("--eval needs a TPU --topology (e.g. --topology v5p-8)")
    if args.num_slices != 1:
        parser.error("--eval plans one slice: drop --num_slices")
    if args.no_step_time or args.extrapolate_from_layers is not None:
        parser.error(
            "--eval times every program and extrapolates with --timing_layers: drop "
            "--no_step_time / --extrapolate_from_layers"
        )
    try:
        args.eval_tasks = eval_tasks(args.eval)
        args.eval_layouts = parse_layouts(args.eval_layouts)
        if args.eval_buckets is not None:
            args.eval_buckets = [parse_bucket(text) for text in args.eval_buckets]
    except ValueError as error:
        parser.error(str(error))
    if (args.eval_data_dir is None) != (args.eval_vocab is None):
        parser.error(
            "--eval_data_dir and --eval_vocab go together: the prompts are counted in tokens"
        )
    for name, value in (
        ("--eval_batch_size", args.eval_batch_size),
        ("--eval_max_new_tokens", args.eval_max_new_tokens),
    ):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")


def eval_tasks(names: str) -> tuple[str, ...]:
    """The tasks of comma-separated suite and task names, in order, each once. Raises ValueError
    naming an unknown one."""
    from alexatm_jax.evaluation import harness, suites

    tasks: list[str] = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name in suites.SUITES:
            tasks.extend(suites.suite_tasks(name))
            continue
        try:
            harness.get_task(name)
        except ValueError as error:
            raise ValueError(f"--eval: {error}; or a suite: {', '.join(suites.SUITES)}") from None
        tasks.append(name)
    if not tasks:
        raise ValueError("--eval: give at least one suite or task, e.g. --eval superglue")
    return tuple(dict.fromkeys(tasks))


def parse_layouts(texts: list[str] | None) -> list[Layout] | None:
    """Layouts of --eval_layouts (None: the default set). Raises ValueError."""
    from alexatm_jax.eval_planning.layouts import parse_layout

    if texts is None:
        return None
    try:
        return [parse_layout(text) for text in texts]
    except ValueError as error:
        raise ValueError(f"--eval_layouts: {error}") from None


def parse_bucket(text: str) -> tuple[int, int]:
    """(input positions, target positions) of 'INPUT:TARGET'. Raises ValueError."""
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise ValueError(f"--eval_buckets: bad bucket {text!r}; write INPUT:TARGET, e.g. 256:64")
    return int(match.group(1)), int(match.group(2))


def eval_setup(args: argparse.Namespace) -> tuple[ModelConfig, int, Layout | None]:
    """(the gin's ModelConfig, the batch size, the gin's layout on the slice or None) of the
    parsed gin configuration. Raises ValueError when the batch size is nowhere."""
    import gin
    from alexatm_jax import gin_registry
    from alexatm_jax.eval_planning.layouts import layout_name
    from alexatm_jax.eval_planning.programs import Layout

    def macro(name: str) -> Any:
        try:
            return gin.query_parameter(f"%{name}")
        except ValueError:
            return None

    config = gin_registry.model_config_from_gin()
    batch = args.eval_batch_size or macro("BATCH_SIZE")
    if batch is None:
        raise ValueError("no batch size: give --eval_batch_size or bind BATCH_SIZE in the gin")
    fsdp, tensor, rules = macro("MESH_FSDP"), macro("MESH_TENSOR"), macro("PARTITION_RULES")
    layout = None
    chips = args.target.num_chips
    if fsdp and tensor and rules and chips % (fsdp * tensor) == 0:
        data = chips // (fsdp * tensor)
        layout = Layout(layout_name(data, fsdp, tensor), data, fsdp, tensor, rules)
    return config, int(batch), layout


def layouts_to_plan(
    args: argparse.Namespace, config: ModelConfig, batch: int, gin_layout: Layout | None
) -> tuple[list[Layout], list[str]]:
    """(the layouts to compile, notes on default layouts left out). Raises ValueError naming a
    given layout that cannot run."""
    from alexatm_jax.eval_planning.layouts import candidate_layouts, layout_problem

    chips = args.target.num_chips
    if args.eval_layouts is not None:
        for layout in args.eval_layouts:
            problem = layout_problem(layout, chips, config, batch)
            if problem:
                raise ValueError(f"--eval_layouts: {problem}")
        return args.eval_layouts, []
    layouts, notes = [], []
    for layout in candidate_layouts(chips):
        if gin_layout is not None and gin_layout.name == layout.name:
            layout = gin_layout
        problem = layout_problem(layout, chips, config, batch)
        if problem:
            notes.append(f"not planned: {problem}")
        else:
            layouts.append(layout)
    if not layouts:
        raise ValueError(f"no layout of {chips} chips can run this: {'; '.join(notes)}")
    return layouts, notes


def program_shapes(args: argparse.Namespace, config: ModelConfig, batch: int) -> list[ProgramShape]:
    """Every program at every bucket. Raises ValueError when a length exceeds max_positions."""
    from alexatm_jax.eval_planning.programs import DECODE_STEP, PREFILL, SCORING, ProgramShape

    cache, limit = args.eval_max_new_tokens, config.max_positions
    buckets = args.eval_buckets or list(
        dict.fromkeys((min(s, limit), min(t, limit)) for s, t in DEFAULT_BUCKETS)
    )
    longest = max([cache] + [n for bucket in buckets for n in bucket])
    if longest > config.max_positions:
        raise ValueError(
            f"--eval_buckets / --eval_max_new_tokens: {longest} positions exceed the model's "
            f"max_positions {config.max_positions}"
        )
    return (
        [ProgramShape(PREFILL, batch, s, cache_len=cache) for s, _ in buckets]
        + [ProgramShape(DECODE_STEP, batch, s, cache_len=cache) for s, _ in buckets]
        + [ProgramShape(SCORING, batch, s, target_len=t) for s, t in buckets]
    )


def compile_layouts(
    args: argparse.Namespace, config: ModelConfig, layouts: list[Layout], shapes: list[ProgramShape]
) -> list[LayoutPlan]:
    """Every layout planned on the slice's compile-only devices, with a progress bar (stderr)."""
    from tqdm import tqdm

    from alexatm_jax import tpu_topology
    from alexatm_jax.eval_planning.layout_plan import compiles_per_bucket, plan_layout

    tpu_topology.prepare_compile_only_environment(args.target)
    devices = tpu_topology.topology_devices(args.target)
    per_layout = sum(
        compiles_per_bucket(s.program, config, args.timing_layers, args.eval_memory) for s in shapes
    )
    plans = []
    with tqdm(
        total=len(layouts) * per_layout, desc="plan eval", unit="compile", file=sys.stderr
    ) as bar:

        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        for number, layout in enumerate(layouts, 1):
            plans.append(
                plan_layout(
                    config,
                    layout,
                    devices,
                    args.target,
                    shapes,
                    layers=args.timing_layers,
                    memory=args.eval_memory,
                    progress=progress,
                )
            )
            bar.update(number * per_layout - bar.n)  # the compiles a layout did not need
    return plans


def suite_inputs(plans: list[LayoutPlan]) -> tuple[dict[str, PlannedPrograms], dict[str, bool]]:
    """(ProgramTimes by layout name, whether each fits): what the suite's wall time
    (`alexatm_jax.eval_planning.suite_time.estimate_suite`) takes, with the workloads."""
    times = {
        plan.layout.name: plan.programs
        for plan in plans
        if plan.programs is not None and plan.timed
    }
    return times, {plan.layout.name: plan.fits for plan in plans}


def suite_estimate(
    args: argparse.Namespace, config: ModelConfig, batch: int, plans: list[LayoutPlan]
) -> Any:
    """The suite's wall time on every planned layout (`estimate_suite`), from the suite data's
    measured lengths where --eval_data_dir has them, else the paper's sizes and lengths."""
    from alexatm_jax.eval_planning.suite_time import estimate_suite
    from alexatm_jax.eval_planning.workload import suite_workloads

    tokenizer = None
    if args.eval_vocab is not None:
        from alexatm_jax.tokenization import Tokenizer

        tokenizer = Tokenizer(args.eval_vocab)
    workloads = suite_workloads(
        args.eval_tasks,
        args.eval_data_dir,
        tokenizer,
        max_new_tokens=args.eval_max_new_tokens,
        note=lambda text: print(f"{PROG}: {text}", file=sys.stderr),
    )
    times, fits = suite_inputs(plans)
    for plan in plans:
        if plan.skipped is None and not plan.timed:
            print(
                f"{PROG}: warning: layout {plan.layout.name}: the TPU cost model gives "
                "non-positive times (it cannot price some collectives of this slice, as for "
                "v4 meshes): memory only, no suite time",
                file=sys.stderr,
            )
    return estimate_suite(workloads, times, batch, fits=fits, max_positions=config.max_positions)


def run_eval_plan(args: argparse.Namespace, bindings: list[str]) -> int:
    """`alexatm-plan --eval`: exit 0 with the report, 2 on a refused configuration, 1 when
    planning fails (one line on stderr)."""
    from alexatm_jax.cli.plan import parse_gin_config
    from alexatm_jax.cli.plan_eval_report import eval_report, format_eval_text
    from alexatm_jax.eval_planning.suite_time import format_table

    os.environ["JAX_PLATFORMS"] = "cpu"  # the TPU compiler is used through its topology only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        parse_gin_config(args.gin_file, bindings, args.gin_search_path)
        config, batch, gin_layout = eval_setup(args)
        layouts, notes = layouts_to_plan(args, config, batch, gin_layout)
        shapes = program_shapes(args, config, batch)
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        plans = compile_layouts(args, config, layouts, shapes)
    except (RuntimeError, ValueError) as error:
        print(f"{PROG}: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    try:
        suite = suite_estimate(args, config, batch, plans)
    except (OSError, ValueError) as error:
        print(f"{PROG}: error: suite workload: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    result = eval_report(args, config, batch, plans, notes, gin_layout)
    result["suite"] = suite.to_json()
    text = format_eval_text(result) + "\n\nSuite wall time (" + ", ".join(args.eval_tasks[:3])
    text += ", ..." if len(args.eval_tasks) > 3 else ""
    text += ")\n" + format_table(suite)
    print(json.dumps(result, indent=2) if args.format == "json" else text)
    if args.json_out:
        path = pathlib.Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{PROG}: JSON report written to {path}", file=sys.stderr)
    return 0
