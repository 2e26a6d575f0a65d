"""Our model checkpoint -> HuggingFace-format AlexaTM directory (safetensors), streaming.

The checkpoint's parameters are restored once to host memory; every HF tensor is produced as
a view of its leaf, made contiguous, written to its shard and dropped. Output:
`config.json`, `model.safetensors` (or `model-0000i-of-0000n.safetensors` shards plus
`model.safetensors.index.json`), and the checkpoint's tokenizer files. transformers 4.30.2's
`from_pretrained` reads it with `AlexaTMSeq2SeqForConditionalGeneration`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import numpy as np
from etils import epath
from flax import traverse_util
from tqdm import tqdm

from alexatm_jax.checkpoints.atomic_dir import atomic_directory, check_output_dir
from alexatm_jax.checkpoints.model_checkpoint import restore_model_checkpoint, tokenizer_dir
from alexatm_jax.conversion.hf_files import SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from alexatm_jax.conversion.hf_names import model_config_to_hf_config, tensor_mappings
from alexatm_jax.conversion.safetensors_stream import TensorSpec, write_safetensors
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.layout import split_layer_path
from alexatm_jax.storage import copy_file

POSITION_IDS_KEY = "model.encoder.position_ids"
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*", re.IGNORECASE)
_UNITS = {
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """Bytes in a size like `5GB` (10**9), `500MiB` (2**20) or a plain integer."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"cannot read size {text!r}: write e.g. 5GB, 500MB, 2GiB or 1000000")
    number, unit = match.groups()
    return int(float(number) * (_UNITS[unit.upper()] if unit else 1))


def hf_tensors(config: ModelConfig, params: Any) -> dict[str, np.ndarray]:
    """HF key -> numpy view (no copy) of the parameter, in HF layout, for every HF tensor.

    Includes the reference's `position_ids` buffer so the exported state dict is complete.
    """
    flat = traverse_util.flatten_dict(params)
    out = {}
    for mapping in tensor_mappings(config):
        path, layer = split_layer_path(mapping.path) if config.scan_layers else (mapping.path, None)
        leaf = flat[path] if layer is None else flat[path][layer]
        out[mapping.hf_key] = mapping.to_hf(leaf)
    out[POSITION_IDS_KEY] = np.arange(config.max_positions, dtype=np.int64)[None]
    return out


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive groups of specs, each at most `max_shard_bytes` unless one tensor is larger."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def export_checkpoint_to_hf(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    show_progress: bool = True,
) -> pathlib.Path | epath.Path:
    """Write the model checkpoint `checkpoint` as a HuggingFace AlexaTM directory at `out` (local
    or a URL such as gs://bucket/hf; uploaded with config.json last).

    dtype: float32 or bfloat16 (default: the checkpoint's). Shards hold at most
    `max_shard_size` bytes (HF convention: GB = 10**9). Returns the output directory.
    """
    final = check_output_dir(out, overwrite)
    max_bytes = parse_size(max_shard_size)
    overrides = {"param_dtype": dtype} if dtype else None
    config, params = restore_model_checkpoint(checkpoint, overrides, to_numpy=True)
    tensors = hf_tensors(config, params)
    specs = [TensorSpec(key, t.dtype, tuple(t.shape)) for key, t in tensors.items()]
    shards = plan_shards(specs, max_bytes)
    names = (
        [SAFETENSORS_SINGLE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    hf_config = model_config_to_hf_config(config) | {"torch_dtype": config.param_dtype}
    tokenizer = tokenizer_dir(checkpoint)
    with (
        atomic_directory(out, overwrite, commit_files=("config.json",)) as tmp,
        tqdm(
            total=sum(s.nbytes for s in specs),
            unit="B",
            unit_scale=True,
            desc="jax->hf",
            disable=not show_progress,
        ) as progress,
    ):

        def produce(spec: TensorSpec) -> np.ndarray:
            progress.update(spec.nbytes)
            return tensors.pop(spec.name)

        for name, shard in zip(names, shards):
            write_safetensors(tmp / name, shard, produce, metadata={"format": "pt"})
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in specs)},
                "weight_map": {s.name: name for name, shard in zip(names, shards) for s in shard},
            }
            (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        for f in sorted(tokenizer.iterdir()) if tokenizer else ():
            copy_file(f, tmp / f.name)
    return final
