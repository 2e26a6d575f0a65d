"""The evaluation job compiled by the TPU compiler: per-chip memory of alexatm-eval's two jitted
computations for a TPU slice that is not there, on this CPU.

    python benchmarks/eval_tpu_plan.py --gin_file gin/experiments/alexatm_20b_eval.gin \
        --topology v5p-8

`alexatm-plan` compiles train steps (a TrainJob: optimizer state, gradients, the loss);
alexatm-eval runs none. This compiles what alexatm-eval jits, at the largest shapes its
`InferenceEngine` builds for the gin's BATCH_SIZE (prompts and targets bucketed up to
max_positions):

* scoring (choice tasks): `target_log_probs`, input and target of --input_len / --target_len;
* generation (the other tasks): `greedy_or_sample` (or beam search with --num_beams > 1), a
  prompt of --input_len, --new_tokens steps of the KV-cached decoder loop, the LM head built
  inside the call.

The parameters are sharded as alexatm-eval shards them: MeshConfig(data=-1, fsdp=MESH_FSDP,
tensor=MESH_TENSOR) with PARTITION_RULES, in the gin's ModelConfig.param_dtype. Prints the TPU
compiler's `memory_analysis()` per chip and whether it fits the chip's HBM. No step time: the
cost model visits a loop body (the scanned layers, the decode loop) once.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 2.0**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--topology", default="v5p-8", help="a Cloud TPU type or topology")
    parser.add_argument(
        "--input_len",
        type=int,
        default=None,
        help="prompt / scoring input positions (default: max_positions)",
    )
    parser.add_argument(
        "--target_len",
        type=int,
        default=None,
        help="scored target positions (default: max_positions)",
    )
    parser.add_argument(
        "--new_tokens", type=int, default=63, help="generated tokens (alexatm-eval's default 63)"
    )
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--json_out", default=None)
    return parser.parse_args(argv)


def eval_layout_from_gin(files: list[str]) -> tuple[Any, Any, int]:
    """(ModelConfig, Partitioner arguments (MeshConfig, rules), BATCH_SIZE) of the eval gin."""
    import gin
    from alexatm_jax import gin_registry
    from alexatm_jax.partitioning import MeshConfig

    gin_registry.parse_gin(files, [], [])
    config = gin_registry.model_config_from_gin()
    mesh = MeshConfig(
        data=-1, fsdp=gin.query_parameter("%MESH_FSDP"), tensor=gin.query_parameter("%MESH_TENSOR")
    )
    return (
        config,
        (mesh, gin.query_parameter("%PARTITION_RULES")),
        gin.query_parameter("%BATCH_SIZE"),
    )


def abstract_params(config: Any, partitioner: Any) -> Any:
    """The parameters as ShapeDtypeStructs carrying the partitioner's shardings."""
    import jax

    from alexatm_jax.model.params import init_params

    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        shapes,
        partitioner.params_shardings(config),
    )


def memory_report(compiled: Any, hbm_gib: float) -> dict[str, Any]:
    """Per-chip argument / output / temporary GiB of a compiled computation, and the verdict."""
    memory = compiled.memory_analysis()
    parts = {
        "arguments_gib": memory.argument_size_in_bytes / GIB,
        "outputs_gib": (memory.output_size_in_bytes - memory.alias_size_in_bytes) / GIB,
        "temporaries_gib": memory.temp_size_in_bytes / GIB,
        "code_gib": memory.generated_code_size_in_bytes / GIB,
    }
    total = sum(parts.values())
    return {
        **parts,
        "total_gib": total,
        "hbm_gib": hbm_gib,
        "share_of_hbm": total / hbm_gib,
        "fits": total <= hbm_gib,
    }


def compile_scoring(
    config: Any, partitioner: Any, params: Any, batch: int, input_len: int, target_len: int
) -> Any:
    """`target_log_probs` compiled for the partitioner's devices."""
    import jax
    import jax.numpy as jnp

    from alexatm_jax.decoding.scoring import target_log_probs

    rows = partitioner.batch_sharding(2)
    inputs = jax.ShapeDtypeStruct((batch, input_len), jnp.int32, sharding=rows)
    targets = jax.ShapeDtypeStruct((batch, target_len), jnp.int32, sharding=rows)
    with partitioner.activate():
        return (
            target_log_probs.trace(params, inputs, inputs, targets, targets, config=config)
            .lower()
            .compile()
        )


def compile_generation(
    config: Any,
    partitioner: Any,
    params: Any,
    batch: int,
    input_len: int,
    new_tokens: int,
    num_beams: int,
) -> Any:
    """Greedy search (or beam search) of `new_tokens` compiled for the partitioner's devices."""
    import jax
    import jax.numpy as jnp

    from alexatm_jax.decoding.beam_search import _beam_search
    from alexatm_jax.decoding.options import DecodeOptions, split_options
    from alexatm_jax.decoding.sampling import _greedy_or_sample

    static, knobs = split_options(DecodeOptions(max_new_tokens=new_tokens, num_beams=num_beams))
    prompts = jax.ShapeDtypeStruct(
        (batch, input_len), jnp.int32, sharding=partitioner.batch_sharding(2)
    )
    rng = jax.eval_shape(lambda: jax.random.key(0))
    with partitioner.activate():
        if num_beams > 1:
            traced = _beam_search.trace(
                params, None, prompts, prompts, knobs, config=config, static=static
            )
        else:
            traced = _greedy_or_sample.trace(
                params, None, prompts, prompts, rng, knobs, config=config, static=static
            )
        return traced.lower().compile()


def plan_eval(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-ready report: the layout and the memory of scoring and of generation."""
    from alexatm_jax import tpu_topology

    target = tpu_topology.parse_tpu_target(args.topology)
    problem = tpu_topology.libtpu_problem()
    if problem:
        raise SystemExit(f"the TPU compiler is unavailable: {problem}")
    tpu_topology.prepare_compile_only_environment(target)
    devices = tpu_topology.topology_devices(target)
    config, (mesh, rules), batch = eval_layout_from_gin(args.gin_file)
    from alexatm_jax.partitioning import Partitioner

    partitioner = Partitioner(mesh, rules, devices=devices)
    params = abstract_params(config, partitioner)
    input_len = args.input_len or config.max_positions
    target_len = args.target_len or config.max_positions
    compile_one = {
        "scoring": functools.partial(
            compile_scoring, config, partitioner, params, batch, input_len, target_len
        ),
        "generation": functools.partial(
            compile_generation,
            config,
            partitioner,
            params,
            batch,
            input_len,
            args.new_tokens,
            args.num_beams,
        ),
    }
    report = {
        "gin_files": args.gin_file,
        "topology": target.topology_name,
        "cloud_type": target.cloud_type,
        "chips": target.num_chips,
        "mesh": str(mesh),
        "rules": rules,
        "batch_size": batch,
        "param_dtype": config.param_dtype,
        "input_len": input_len,
        "target_len": target_len,
        "new_tokens": args.new_tokens,
        "num_beams": args.num_beams,
    }
    for name, compile_fn in compile_one.items():
        report[name] = memory_report(compile_fn(), target.hbm_gib)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["JAX_PLATFORMS"] = "cpu"  # the TPU compiler is used through its topology only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO_ROOT))
    report = plan_eval(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
