"""Convert parameter trees between the unscanned and the scanned layer layouts.

Unscanned: `encoder/layers_0/...`, `encoder/layers_1/...` (one subtree per layer).
Scanned:   `encoder/layers/...`, every leaf stacked along a new leading `layers` axis.
The same holds for `decoder`. Leaves may be numpy or jax arrays; numpy stays numpy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Params = Any
Path = tuple[str, ...]

LAYER_STACKS = ("encoder", "decoder")
SCANNED_LAYERS = "layers"
_UNSCANNED_LAYER = re.compile(r"layers_(\d+)")


def split_layer_path(path: Path) -> tuple[Path, int | None]:
    """Map an unscanned path onto the scanned tree.

    Returns `(scanned_path, layer_index)` for a path inside `encoder/layers_i` or
    `decoder/layers_i`, and `(path, None)` for every other path.
    """
    if len(path) >= 2 and path[0] in LAYER_STACKS:
        match = _UNSCANNED_LAYER.fullmatch(path[1])
        if match:
            return (path[0], SCANNED_LAYERS) + tuple(path[2:]), int(match.group(1))
    return path, None


def is_scanned(params: Params) -> bool:
    """True when the tree uses the scanned layout (`encoder/layers` exists)."""
    return SCANNED_LAYERS in params.get("encoder", {})


def _layer_indices(stack: Mapping[str, Any]) -> list[int]:
    indices = sorted(int(m.group(1)) for m in map(_UNSCANNED_LAYER.fullmatch, stack) if m)
    if indices != list(range(len(indices))):
        raise ValueError(f"layer subtrees are not numbered 0..n-1: found layers_{indices}")
    return indices


def _stack(leaves: list[Any]) -> Any:
    if all(isinstance(leaf, np.ndarray) for leaf in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _to_plain_dict(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _to_plain_dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def scan_params(params: Params, *, consume: bool = False) -> Params:
    """The scanned-layout copy of an unscanned tree (already-scanned trees come back unchanged).

    With `consume=True` the per-layer leaves are removed from `params` as they are stacked, so the
    extra memory at any moment is one stacked leaf (for trees the caller no longer needs).
    """
    if is_scanned(params):
        return params
    out = dict(params) if consume else _to_plain_dict(params)
    for name in LAYER_STACKS:
        if name not in out:
            continue
        stack = out[name]
        names = [f"layers_{i}" for i in _layer_indices(stack)]
        if not names:
            raise ValueError(f"{name} has no layers_<i> subtrees to stack")
        flats = [traverse_util.flatten_dict(stack.pop(n)) for n in names]
        stacked = {key: _stack([flat.pop(key) for flat in flats]) for key in list(flats[0])}
        stack[SCANNED_LAYERS] = traverse_util.unflatten_dict(stacked)
    return out


def unscan_params(params: Params, *, consume: bool = False) -> Params:
    """The unscanned-layout copy of a scanned tree (already-unscanned trees come back unchanged).

    numpy leaves become views of the stacked arrays (no copy); jax leaves are sliced.
    With `consume=True` each stacked leaf is dropped from `params` once it has been split.
    """
    if not is_scanned(params):
        return params
    out = dict(params) if consume else _to_plain_dict(params)
    for name in LAYER_STACKS:
        if name not in out:
            continue
        stack = out[name]
        flat = traverse_util.flatten_dict(stack.pop(SCANNED_LAYERS))
        lengths = {leaf.shape[0] for leaf in flat.values()}
        if len(lengths) != 1:
            raise ValueError(
                f"{name}/{SCANNED_LAYERS} leaves disagree on the layer count: {lengths}"
            )
        num_layers = lengths.pop()
        per_layer: list[dict[tuple[str, ...], Any]] = [{} for _ in range(num_layers)]
        for key in list(flat):
            leaf = flat.pop(key)
            for i in range(num_layers):
                per_layer[i][key] = leaf[i]
        for i, layer in enumerate(per_layer):
            stack[f"layers_{i}"] = traverse_util.unflatten_dict(layer)
    return out


def convert_layout(params: Params, scan_layers: bool, *, consume: bool = False) -> Params:
    """`params` in the scanned layout when `scan_layers`, else in the unscanned layout."""
    if scan_layers:
        return scan_params(params, consume=consume)
    return unscan_params(params, consume=consume)
