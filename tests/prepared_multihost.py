"""Read prepared data as one process of a multi-process job and keep the global batches.

    python tests/prepared_multihost.py PREPARED_DIR RECIPE_JSON OUT_DIR STEPS GLOBAL_BATCH
        [--resume STATE_JSON] --num_cpu_devices N [--coordinator_address A --num_processes P
        --process_id I]

Each process joins the job (`jax.distributed`), builds the trainer's data path for its data
shard (Partitioner over all devices, `make_host_source('prepared')`'s reader, GlobalBatches),
reads STEPS global batches, and gathers them; process 0 writes OUT_DIR/batches.npz (feature ->
[steps, global batch, length]) and OUT_DIR/state.json (the data state a checkpoint would save).
The registry check is skipped: the recipe comes from RECIPE_JSON (tests/prepared_fixtures.py).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("prepared_dir", "recipe", "out_dir"):
        parser.add_argument(name)
    parser.add_argument("steps", type=int)
    parser.add_argument("global_batch", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--num_cpu_devices", type=int, required=True)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    if args.num_processes:
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)

    from jax.experimental import multihost_utils

    from alexatm_jax.data.global_batches import GlobalBatches, per_host_batch_size
    from alexatm_jax.data.prepared_batches import PreparedHostBatches, PreparedRows
    from alexatm_jax.data.prepared_format import read_manifest
    from alexatm_jax.partitioning import MeshConfig, Partitioner

    partitioner = Partitioner(MeshConfig(), "data_parallel")
    shard_index, num_shards = partitioner.data_shard_info()
    with open(args.recipe) as handle:
        recipe = json.load(handle)
    rows = PreparedRows(
        args.prepared_dir,
        read_manifest(args.prepared_dir),
        recipe,
        split="train",
        sequence_length={"inputs": 64, "targets": 64},
        seed=0,
    )
    resume = json.load(open(args.resume)) if args.resume else None
    source = PreparedHostBatches(
        rows,
        shard_index=shard_index,
        num_shards=num_shards,
        per_host_batch_size=per_host_batch_size(args.global_batch, partitioner),
        preparation_digest="test",
        resume_state=resume,
    )
    batches = GlobalBatches(source, partitioner)
    kept: dict[str, list[np.ndarray]] = {}
    for _ in range(args.steps):
        for name, array in next(batches).items():
            kept.setdefault(name, []).append(multihost_utils.process_allgather(array, tiled=True))
    if jax.process_index() == 0:
        os.makedirs(args.out_dir, exist_ok=True)
        np.savez(
            os.path.join(args.out_dir, "batches.npz"), **{k: np.stack(v) for k, v in kept.items()}
        )
        with open(os.path.join(args.out_dir, "state.json"), "w") as handle:
            json.dump(batches.state(), handle)
    print(
        f"process {jax.process_index()} of {jax.process_count()}: shard {shard_index}/{num_shards}, done"
    )


if __name__ == "__main__":
    main()
