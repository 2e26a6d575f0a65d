"""HuggingFace-format AlexaTM directory -> our model checkpoint, streaming tensor by tensor.

The target tree (scanned: layers stacked) is preallocated once in the output dtype; each HF
tensor is read from its memory-mapped file, re-laid out, written into its slot and dropped, so
the weights are held once. Key names and shapes are checked before any data is read.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np
from flax import traverse_util
from tqdm import tqdm

from alexatm_jax.checkpoints.atomic_dir import check_output_dir
from alexatm_jax.checkpoints.model_checkpoint import save_model_checkpoint
from alexatm_jax.conversion import hf_files
from alexatm_jax.conversion.hf_names import (
    IGNORED_HF_KEYS,
    OPTIONAL_HF_KEYS,
    TensorMapping,
    hf_aliases,
    hf_config_to_model_config,
    tensor_mappings,
)
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.layout import split_layer_path
from alexatm_jax.model.params import param_shapes

Params = Any
_MAX_LISTED = 30


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """Where one HF tensor lives and what it looks like, read from file headers only."""

    file: pathlib.Path
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class Slot:
    """The place of one HF tensor in our (possibly scanned) tree."""

    mapping: TensorMapping
    path: tuple[str, ...]
    layer: int | None
    shape: tuple[int, ...]  # of this tensor in our layout (one layer's slice when scanned)
    hf_shape: tuple[int, ...]


def inventory(files: list[pathlib.Path]) -> dict[str, StoredTensor]:
    """Every tensor name of the weight files with its file, shape and dtype (no data read)."""
    found: dict[str, StoredTensor] = {}
    for handle, path in zip(hf_files.iter_weight_files(files), files):
        for key in handle.keys():
            if key in found:
                raise ValueError(f"tensor {key} appears in both {found[key].file} and {path}")
            found[key] = StoredTensor(path, handle.shape(key), handle.dtype(key))
    return found


def plan_slots(config: ModelConfig) -> dict[str, Slot]:
    """HF key -> Slot for every parameter of `config`, in its scan_layers layout."""
    unscanned = traverse_util.flatten_dict(param_shapes(config.replace(scan_layers=False)))
    slots = {}
    for mapping in tensor_mappings(config):
        path, layer = split_layer_path(mapping.path) if config.scan_layers else (mapping.path, None)
        shape = tuple(unscanned[mapping.path].shape)
        slots[mapping.hf_key] = Slot(mapping, path, layer, shape, mapping.hf_shape(shape))
    return slots


def allocation_shapes(slots: dict[str, Slot]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Leaf path -> full leaf shape (layers stacked in front when scanned) covering all slots."""
    layers: dict[tuple[str, ...], int] = {}
    shapes: dict[tuple[str, ...], tuple[int, ...]] = {}
    for slot in slots.values():
        shapes[slot.path] = slot.shape
        if slot.layer is not None:
            layers[slot.path] = max(layers.get(slot.path, 0), slot.layer + 1)
    return {
        path: ((layers[path],) if path in layers else ()) + shape for path, shape in shapes.items()
    }


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    hidden = len(items) - _MAX_LISTED
    return shown + (f", ... and {hidden} more" if hidden > 0 else "")


def check_keys(
    stored: dict[str, StoredTensor], slots: dict[str, Slot], aliases: dict[str, str], source: str
) -> None:
    """Raise ValueError listing missing keys, unexpected keys and wrong shapes, if any."""
    present = {aliases.get(key, key) for key in stored}
    missing = sorted(k for k in slots if k not in present and k not in OPTIONAL_HF_KEYS)
    unexpected = sorted(
        k for k in stored if k not in IGNORED_HF_KEYS and aliases.get(k, k) not in slots
    )
    wrong = sorted(
        f"{k} {list(t.shape)} (expected {list(slots[aliases.get(k, k)].hf_shape)})"
        for k, t in stored.items()
        if aliases.get(k, k) in slots and t.shape != slots[aliases.get(k, k)].hf_shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {_listing(wrong)}")
    if problems:
        raise ValueError(f"{source} does not match its config.json: " + "; ".join(problems))


def source_dtype(stored: dict[str, StoredTensor]) -> str:
    """The floating dtype shared by all stored tensors, or float32 when they mix dtypes."""
    floating = {
        t.dtype.name
        for t in stored.values()
        if np.issubdtype(t.dtype, np.floating) or t.dtype.name == "bfloat16"
    }
    return floating.pop() if len(floating) == 1 else "float32"


def load_hf_params(
    files: list[pathlib.Path],
    config: ModelConfig,
    stored: dict[str, StoredTensor] | None = None,
    *,
    show_progress: bool = True,
) -> Params:
    """Numpy parameter tree (config's layout and param_dtype) filled from the weight files.

    `stored`: the files' `inventory` when already read. Keys and shapes are checked before any
    data is read; two keys that alias one tensor must agree exactly.
    """
    stored = inventory(files) if stored is None else stored
    slots = plan_slots(config)
    aliases = hf_aliases(config)
    check_keys(stored, slots, aliases, str(files[0].parent))
    dtype = np.dtype(config.param_dtype)
    flat = {path: np.empty(shape, dtype) for path, shape in allocation_shapes(slots).items()}
    filled: dict[str, str] = {}
    total = sum(int(np.prod(t.shape)) * t.dtype.itemsize for t in stored.values())
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="hf->jax", disable=not show_progress
    ) as progress:
        for handle in hf_files.iter_weight_files(files):
            for key in handle.keys():
                progress.update(int(np.prod(stored[key].shape)) * stored[key].dtype.itemsize)
                canonical = aliases.get(key, key)
                if key in IGNORED_HF_KEYS:
                    continue
                slot = slots[canonical]
                target = flat[slot.path] if slot.layer is None else flat[slot.path][slot.layer]
                value = slot.mapping.to_ours(handle.tensor(key))
                if canonical in filled:
                    if not np.array_equal(target, value.astype(dtype)):
                        raise ValueError(
                            f"{key} and {filled[canonical]} must hold the same tensor for "
                            f"share_embeddings={config.share_embeddings}, tie_word_embeddings="
                            f"{config.tie_word_embeddings}, but they differ: fix config.json"
                        )
                    continue
                target[...] = value
                filled[canonical] = key
    for key in OPTIONAL_HF_KEYS:
        if key not in filled:
            slot = slots[key]
            flat[slot.path][...] = 0
    return traverse_util.unflatten_dict(flat)


def convert_hf_to_checkpoint(
    hf_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    scan_layers: bool = False,
    dtype: str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> pathlib.Path:
    """Convert a HuggingFace AlexaTM directory into a model checkpoint at `out`.

    dtype: parameter dtype of the checkpoint (float32 or bfloat16); default: the source's.
    Tokenizer files are copied into the checkpoint's tokenizer/. Returns the checkpoint path.
    """
    check_output_dir(out, overwrite)
    hf_dir = pathlib.Path(hf_dir)
    files = hf_files.find_weight_files(hf_dir)
    stored = inventory(files)
    config = hf_config_to_model_config(hf_files.read_hf_config(hf_dir), scan_layers=scan_layers)
    config = config.replace(param_dtype=dtype or source_dtype(stored))
    params = load_hf_params(files, config, stored, show_progress=show_progress)
    return save_model_checkpoint(
        out,
        config,
        params,
        hf_files.tokenizer_files(hf_dir),
        source=f"huggingface:{hf_dir.absolute()}",
        overwrite=overwrite,
    )
