"""The files of a HuggingFace-format model directory: config, weight files, tokenizer files.

Weight files are opened lazily and read one tensor at a time: safetensors through our
memory-mapped reader, `pytorch_model*.bin` through `torch.load(mmap=True, weights_only=True)`
(torch is needed only for .bin files).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any, Protocol

import ml_dtypes
import numpy as np

from alexatm_jax.conversion.safetensors_stream import SafetensorsFile

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_SINGLE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_PATTERNS = (
    "*.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


class WeightFile(Protocol):
    """One weight file, read tensor by tensor."""

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> np.dtype: ...

    def tensor(self, key: str) -> np.ndarray: ...

    def close(self) -> None: ...


class TorchBinFile:
    """A `pytorch_model*.bin` file opened with mmap; tensors become numpy views, bf16 included."""

    def __init__(self, path: str | os.PathLike):
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"{path} is a PyTorch .bin file and reading it needs torch (pip install torch); "
                "safetensors files need no torch"
            ) from error
        self._torch = torch
        self.path = os.fspath(path)
        try:
            self._state = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as error:  # torch's messages do not name the file
            raise ValueError(
                f"{self.path} is not a readable PyTorch weight file "
                f"({type(error).__name__}: {str(error).splitlines()[0][:300]})"
            ) from error

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored shape of `key`."""
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> np.dtype:
        """The numpy dtype `tensor(key)` returns."""
        if self._state[key].dtype == self._torch.bfloat16:
            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(str(self._state[key].dtype).removeprefix("torch."))

    def tensor(self, key: str) -> np.ndarray:
        """A numpy view of `key` (bfloat16 reinterpreted bit for bit, no float copy)."""
        t = self._state[key]
        if t.dtype == self._torch.bfloat16:
            return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def close(self) -> None:
        """Release the state dict (and with it the memory map)."""
        self._state = {}


def read_hf_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a HuggingFace model directory."""
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{hf_dir} has no config.json: is it a HuggingFace model directory?"
        )
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error


def _indexed_files(index_path: pathlib.Path) -> list[pathlib.Path]:
    weight_map = json.loads(index_path.read_text())["weight_map"]
    files = [index_path.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} names weight files that do not exist: {missing}")
    return files


def find_weight_files(hf_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The weight files of `hf_dir`, safetensors preferred over .bin, sharded via their index."""
    d = pathlib.Path(hf_dir)
    if (d / SAFETENSORS_SINGLE).is_file():
        return [d / SAFETENSORS_SINGLE]
    if (d / SAFETENSORS_INDEX).is_file():
        return _indexed_files(d / SAFETENSORS_INDEX)
    loose = sorted(d.glob("*.safetensors"))
    if loose:
        return loose
    if (d / TORCH_SINGLE).is_file():
        return [d / TORCH_SINGLE]
    if (d / TORCH_INDEX).is_file():
        return _indexed_files(d / TORCH_INDEX)
    raise FileNotFoundError(
        f"{d} has no weights: expected {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, *.safetensors, "
        f"{TORCH_SINGLE} or {TORCH_INDEX}"
    )


def open_weight_file(path: str | os.PathLike) -> WeightFile:
    """A reader for one safetensors or .bin weight file."""
    if os.fspath(path).endswith(".safetensors"):
        return SafetensorsFile(path)
    return TorchBinFile(path)


def iter_weight_files(files: list[pathlib.Path]) -> Iterator[WeightFile]:
    """Open the files one after another, closing each before the next is opened."""
    for path in files:
        handle = open_weight_file(path)
        try:
            yield handle
        finally:
            handle.close()


def tokenizer_files(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Tokenizer files to copy through (SentencePiece *.model, tokenizer/special-token JSONs)."""
    d = pathlib.Path(directory)
    found = {p for pattern in TOKENIZER_PATTERNS for p in d.glob(pattern) if p.is_file()}
    return sorted(found)
