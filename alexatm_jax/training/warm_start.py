"""Initialise a new run's parameters from another checkpoint (`train.init_from`), params only.

Sources: an alexatm-jax model checkpoint (`alexatm_checkpoint.json` marker, e.g. converted
release weights) or a training MODEL_DIR (its newest checkpoint). Optimizer state, step and data
position are NOT taken: the run starts at step 0 with fresh optimizer statistics. With
`prefixes`, only the parameters under those paths are copied (e.g. `('encoder',
'token_embedder')` warm-starts the encoder as the paper did,
docs/paper_facts.md#encoder-warm-start) and the rest keep their random initialisation. Copied
parameters must have the configured shapes; the layer layout (scanned or not) is converted as
needed.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util

from alexatm_jax.checkpoints.model_checkpoint import is_model_checkpoint, restore_model_checkpoint
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.layout import convert_layout
from alexatm_jax.storage import as_path
from alexatm_jax.training.checkpointing import restore_params_from_model_dir
from alexatm_jax.training.model_dir import is_training_model_dir


def _matches(path: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    joined = "/".join(path)
    return any(joined == p or joined.startswith(p.rstrip("/") + "/") for p in prefixes)


def load_source_params(path: str) -> tuple[ModelConfig, Any]:
    """(ModelConfig, params as host numpy arrays) of a model checkpoint or training MODEL_DIR."""
    if is_model_checkpoint(path):
        return restore_model_checkpoint(path, to_numpy=True)
    if is_training_model_dir(path):
        params, config, _ = restore_params_from_model_dir(path)
        return config, jax.tree.map(np.asarray, params)
    raise FileNotFoundError(
        f"init_from={path!r} is neither an alexatm-jax model checkpoint (no alexatm_checkpoint.json)"
        " nor a training MODEL_DIR (no model_config.json + checkpoints/)"
        + ("" if as_path(path).exists() else ": the path does not exist")
    )


def warm_start_params(
    params: Any, model_config: ModelConfig, init_from: str, prefixes: tuple[str, ...] = ()
) -> tuple[Any, list[str]]:
    """`params` (the fresh, sharded parameters) with leaves replaced from `init_from`.

    Every leaf is replaced when `prefixes` is empty, else only those under a prefix. Raises
    ValueError naming the offending paths when a selected leaf is missing in the source or has
    another shape. Returns (new params in the shardings of `params`, the copied paths).
    """
    source_config, source = load_source_params(init_from)
    source = traverse_util.flatten_dict(convert_layout(source, model_config.scan_layers))
    target = traverse_util.flatten_dict(params)
    selected = [p for p in target if not prefixes or _matches(p, prefixes)]
    if prefixes and not selected:
        tops = sorted({p[0] for p in target})
        raise ValueError(
            f"init_from_prefixes {list(prefixes)} match no parameter; top-level names are {tops}"
        )
    missing = ["/".join(p) for p in selected if p not in source]
    wrong = [
        f"{'/'.join(p)}: source {source[p].shape} vs configured {target[p].shape}"
        for p in selected
        if p in source and source[p].shape != target[p].shape
    ]
    if missing or wrong:
        raise ValueError(
            f"init_from={init_from} does not fit the configured model "
            f"(source vocab_size={source_config.vocab_size}, d_model={source_config.d_model}): "
            + "; ".join((["missing: " + ", ".join(missing[:5])] if missing else []) + wrong[:5])
            + ". Restrict the copy with train.init_from_prefixes or configure a matching model."
        )
    for path in selected:
        leaf = target[path]
        value = np.asarray(source[path], dtype=leaf.dtype)
        target[path] = jax.make_array_from_callback(
            value.shape, leaf.sharding, lambda index, v=value: v[index]
        )
    return traverse_util.unflatten_dict(target), ["/".join(p) for p in selected]
