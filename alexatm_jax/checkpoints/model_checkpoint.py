"""The alexatm-jax model checkpoint: parameters + config (+ tokenizer), no optimizer state.

Directory layout:

    alexatm_checkpoint.json   marker: format name and version, param layout, param dtype, source
    model_config.json         ModelConfig.to_dict()
    params/                   Orbax (StandardCheckpointer) parameter tree
    digests.json              a content digest of every parameter array (`checkpoints.digests`)
    tokenizer/                optional: tokenizer files copied through (e.g. a SentencePiece .model)

The marker is written last and the directory is renamed into place at the end (uploaded with
the marker last, in a bucket), so a directory with a marker is always complete. Restoring recomputes the digests of what was read and raises
DigestMismatchError naming the arrays that differ; a checkpoint written before digests existed
restores with an "unverified" warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from alexatm_jax.checkpoints import digests
from alexatm_jax.checkpoints.atomic_dir import atomic_directory
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.layout import (
    LAYER_STACKS,
    SCANNED_LAYERS,
    convert_layout,
    is_scanned,
    split_layer_path,
)
from alexatm_jax.model.params import param_shapes
from alexatm_jax.storage import as_path, copy_file

MARKER_FILE = "alexatm_checkpoint.json"
CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
DIGESTS_FILE = "digests.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_NAME = "alexatm-jax-model-checkpoint"
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)

Params = Any
FlatShapes = dict[tuple[str, ...], tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """The marker file's contents."""

    format_version: int
    param_layout: str  # "scanned" or "unscanned"
    param_dtype: str
    num_params: int
    source: str


def is_model_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding our marker file."""
    return (as_path(path) / MARKER_FILE).is_file()


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """The parsed marker of the checkpoint at `path`; errors name the missing or newer format."""
    marker = as_path(path) / MARKER_FILE
    if not marker.is_file():
        raise FileNotFoundError(
            f"{path} is not an alexatm-jax model checkpoint: {MARKER_FILE} is missing "
            "(create one with save_model_checkpoint or `alexatm-convert hf-to-jax`)"
        )
    values = json.loads(marker.read_text())
    if values.get("format") != FORMAT_NAME:
        raise ValueError(f"{marker} has format {values.get('format')!r}, expected {FORMAT_NAME!r}")
    if values["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{marker} has format version {values['format_version']}; this "
            f"alexatm-jax reads versions up to {FORMAT_VERSION}: upgrade alexatm-jax"
        )
    return CheckpointInfo(
        values["format_version"],
        values["param_layout"],
        values["param_dtype"],
        values["num_params"],
        values.get("source", ""),
    )


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored in the checkpoint (its scan_layers matches the stored layout)."""
    return ModelConfig.from_dict(json.loads((as_path(path) / CONFIG_FILE).read_text()))


def tokenizer_dir(path: str | os.PathLike) -> epath.Path | None:
    """The checkpoint's tokenizer directory, or None when it was saved without one."""
    directory = as_path(path) / TOKENIZER_DIR
    return directory if directory.is_dir() else None


def _flat_shapes(tree: Mapping[str, Any]) -> FlatShapes:
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def tree_mismatch(expected: FlatShapes, actual: FlatShapes) -> list[str]:
    """Human-readable differences (missing, unexpected, wrong shape) between two shape maps."""
    name = "/".join
    problems = [f"missing {name(k)} {expected[k]}" for k in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {name(k)} {actual[k]}" for k in sorted(set(actual) - set(expected))]
    problems += [
        f"{name(k)} has shape {actual[k]}, expected {expected[k]}"
        for k in sorted(set(expected) & set(actual))
        if expected[k] != actual[k]
    ]
    return problems


def _single_dtype(params: Params) -> str:
    dtypes = {np.dtype(leaf.dtype).name for leaf in jax.tree_util.tree_leaves(params)}
    if len(dtypes) != 1:
        raise ValueError(f"parameters mix dtypes {sorted(dtypes)}; cast them to one dtype first")
    return dtypes.pop()


def _streaming_checkpointer() -> ocp.Checkpointer:
    """A synchronous Orbax PyTree checkpointer that writes host arrays without copying them.

    Orbax's defaults deep-copy every numpy leaf and compress whole arrays in memory, which
    doubles or triples peak memory; uncompressed writes of the caller's own buffers add only
    a few MB (weights barely compress anyway). Readable by `ocp.StandardCheckpointer`.
    """
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)),
    )
    return ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)
    )


def save_model_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig,
    params: Params,
    tokenizer_files: Sequence[str | os.PathLike] = (),
    *,
    source: str = "",
    overwrite: bool = False,
) -> epath.Path:
    """Write `params` (numpy or jax arrays, either layout) as a model checkpoint at `path` (a
    local directory or a URL such as gs://bucket/model; see `atomic_dir`).

    The stored layout is the layout of `params`; the saved config's scan_layers and param_dtype
    follow the tree. jax leaves are fetched to host (numpy) first; numpy leaves are written in
    place, so saving adds no copy of the weights. Returns the checkpoint directory. Refuses a
    non-empty `path` unless `overwrite`.
    """
    scanned = is_scanned(params)
    dtype = _single_dtype(params)
    config = config.replace(scan_layers=scanned, param_dtype=dtype)
    problems = tree_mismatch(_flat_shapes(param_shapes(config)), _flat_shapes(params))
    if problems:
        raise ValueError("parameters do not match the config: " + "; ".join(problems))
    files = [as_path(f) for f in tokenizer_files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"tokenizer file {f} does not exist")
    if len({f.name for f in files}) != len(files):
        raise ValueError(f"tokenizer files have clashing names: {[f.name for f in files]}")

    if jax.process_count() > 1:
        raise RuntimeError(
            "save_model_checkpoint writes from a single process; in a multi-host "
            "job save the trainer's checkpoint instead"
        )
    host_params = jax.tree.map(np.asarray, params)
    with atomic_directory(path, overwrite, commit_files=(MARKER_FILE,)) as tmp:
        _streaming_checkpointer().save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(host_params))
        (tmp / DIGESTS_FILE).write_text(
            json.dumps(digests.manifest(digests.tree_digests(host_params)), indent=1) + "\n"
        )
        (tmp / CONFIG_FILE).write_text(config.to_json() + "\n")
        if files:
            (tmp / TOKENIZER_DIR).mkdir()
            for f in files:
                copy_file(f, tmp / TOKENIZER_DIR / f.name)
        marker = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "param_layout": "scanned" if scanned else "unscanned",
            "param_dtype": dtype,
            "num_params": sum(int(np.prod(s)) for s in _flat_shapes(params).values()),
            "source": source,
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return as_path(path)


def _overridden_config(stored: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    known = set(stored.to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig fields {unknown}; known fields are {sorted(known)}")
    architecture = stored.architecture()
    changed = sorted(
        k
        for k, v in overrides.items()
        if k in architecture and k != "param_dtype" and v != architecture[k]
    )
    if changed:
        raise ValueError(
            "config overrides change the architecture of the stored parameters: "
            + ", ".join(f"{k}={overrides[k]!r} (stored {architecture[k]!r})" for k in changed)
            + "; only run-time fields (dtype, param_dtype, scan_layers, remat_policy, "
            "attention_impl, dropout rates) can be overridden at restore"
        )
    return stored.replace(**overrides)


def _sharding_in_stored_layout(sharding: Sharding, stored_scanned: bool) -> Sharding:
    """The sharding of one stored leaf given the sharding of the matching target-layout leaf."""
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        if stored_scanned:  # target is one layer; stored has the extra leading layers axis
            return NamedSharding(sharding.mesh, PartitionSpec(None, *spec))
        return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))
    if sharding.is_fully_replicated:
        return sharding
    raise ValueError(
        f"cannot move sharding {sharding} between the scanned and unscanned layouts; "
        "pass NamedShardings or restore with the stored scan_layers"
    )


def _target_path(
    stored_path: tuple[str, ...], stored_scanned: bool, target_scanned: bool
) -> tuple[str, ...]:
    """The target-layout path whose sharding decides the sharding of a stored leaf."""
    if stored_scanned == target_scanned:
        return stored_path
    if stored_scanned:
        if stored_path[0] in LAYER_STACKS and stored_path[1:2] == (SCANNED_LAYERS,):
            return (stored_path[0], "layers_0") + stored_path[2:]
        return stored_path
    return split_layer_path(stored_path)[0]


def _stored_shardings(
    sharding: Any, stored: FlatShapes, stored_scanned: bool, target_scanned: bool
) -> dict[tuple[str, ...], Sharding]:
    """One sharding per stored leaf, from a single Sharding or a tree in the target layout."""
    if isinstance(sharding, Sharding):
        return {path: sharding for path in stored}
    target = traverse_util.flatten_dict(dict(sharding))
    sources = {path: _target_path(path, stored_scanned, target_scanned) for path in stored}
    missing = sorted({"/".join(p) for p in sources.values() if p not in target})
    if missing:
        raise ValueError(f"the sharding tree lacks entries for {missing}")
    return {
        path: target[source]
        if source == path
        else _sharding_in_stored_layout(target[source], stored_scanned)
        for path, source in sources.items()
    }


def restore_model_checkpoint(
    path: str | os.PathLike,
    config_overrides: Mapping[str, Any] | None = None,
    sharding: Sharding | Params | None = None,
    *,
    to_numpy: bool = False,
) -> tuple[ModelConfig, Params]:
    """Load `(config, params)` from a model checkpoint.

    The params come in the layout of the (overridden) config's scan_layers and in its
    param_dtype. `sharding`: one Sharding for every leaf, or a tree of Shardings in the target
    layout; default: the first local device. `to_numpy=True` returns host numpy arrays instead.
    The arrays are read in their stored dtype and checked against `digests.json` before any
    cast (DigestMismatchError names the arrays that differ).
    """
    path = as_path(path)
    info = read_checkpoint_info(path)
    stored_config = read_model_config(path)
    config = _overridden_config(stored_config, dict(config_overrides or {}))
    stored_scanned = info.param_layout == "scanned"
    expected = _flat_shapes(param_shapes(stored_config.replace(scan_layers=stored_scanned)))
    checkpointer = ocp.StandardCheckpointer()
    on_disk = _flat_shapes(checkpointer.metadata(path / PARAMS_DIR).item_metadata.tree)
    problems = tree_mismatch(expected, on_disk)
    if problems:
        raise ValueError(
            f"{path / PARAMS_DIR} does not match {CONFIG_FILE}: " + "; ".join(problems)
        )

    stored_dtype = np.dtype(info.param_dtype)
    if to_numpy:
        shardings = {p: None for p in expected}
    else:
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = _stored_shardings(
            default if sharding is None else sharding, expected, stored_scanned, config.scan_layers
        )
    target = traverse_util.unflatten_dict(
        {
            p: jax.ShapeDtypeStruct(shape, stored_dtype, sharding=shardings[p])
            for p, shape in expected.items()
        }
    )
    restored = checkpointer.restore(path / PARAMS_DIR, target)
    verify_params(path, restored)
    if np.dtype(config.param_dtype) != stored_dtype:
        restored = jax.tree.map(lambda x: x.astype(config.param_dtype), restored)
    params = convert_layout(restored, config.scan_layers, consume=True)
    if sharding is not None and not to_numpy and stored_scanned != config.scan_layers:
        params = jax.device_put(params, sharding)
    return config, params


def verify_params(path: str | os.PathLike, params: Params) -> bool:
    """Check `params` (as read from the checkpoint at `path`, before any cast or layout change)
    against its `digests.json`. Returns True when verified, False (with a warning) for a
    checkpoint written before digests existed; raises DigestMismatchError naming the arrays that
    differ, or whose record is missing or damaged."""
    record_path = as_path(path) / DIGESTS_FILE
    if not record_path.is_file():
        logger.warning(
            "model checkpoint %s has no %s (written before checkpoints recorded "
            "digests): its parameters are loaded unverified",
            path,
            DIGESTS_FILE,
        )
        return False
    try:
        recorded = json.loads(record_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise digests.DigestMismatchError(f"{record_path} is damaged ({error})") from error
    digests.compare(digests.tree_digests(params), recorded, str(path))
    return True
