"""Read and write the safetensors format one tensor at a time, with numpy (bfloat16 included).

Our own reader/writer of the documented format (8-byte little-endian header length, a JSON
header of `{name: {dtype, shape, data_offsets}}` plus `__metadata__`, then the raw bytes):
reading memory-maps the file so a tensor is only read when used, and writing streams tensors
to disk one by one, so neither direction ever holds a whole shard in memory. bfloat16 is
ml_dtypes.bfloat16 (a jax dependency), independent of the installed safetensors version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
_ALIGNMENT = 8

if sys.byteorder != "little":
    raise ImportError("safetensors files are little-endian; this machine is big-endian")


class SafetensorsFile:
    """A memory-mapped safetensors file: `keys()`, `shape(key)`, `dtype(key)`, `tensor(key)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
            self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
            data_bytes = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
        except (
            struct.error,
            ValueError,
            UnicodeDecodeError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
        ) as error:
            raise ValueError(
                f"{self.path} is not a readable safetensors file (damaged header: "
                f"{type(error).__name__}: {error})"
            ) from error
        self._entries = header
        self._data_start = 8 + header_len
        size = os.path.getsize(self.path)
        if size < self._data_start + data_bytes:
            raise ValueError(
                f"{self.path} is truncated: its header lists "
                f"{self._data_start + data_bytes} bytes, the file has {size}"
            )
        self._buffer: np.memmap | None = None

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return sorted(self._entries, key=lambda k: self._entries[k]["data_offsets"][0])

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored shape of `key`."""
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        """The stored numpy dtype of `key`."""
        code = self._entries[key]["dtype"]
        if code not in DTYPES:
            raise ValueError(f"{self.path}: tensor {key} has unsupported dtype {code}")
        return DTYPES[code]

    def tensor(self, key: str) -> np.ndarray:
        """A read-only view of `key` backed by the file (bytes are read when touched)."""
        if self._buffer is None:
            self._buffer = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = self._entries[key]["data_offsets"]
        raw = self._buffer[self._data_start + begin : self._data_start + end]
        return raw.view(self.dtype(key)).reshape(self.shape(key))

    def close(self) -> None:
        """Drop the memory map (views handed out keep it alive until they are freed)."""
        self._buffer = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor to be written."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_safetensors(
    path: str | os.PathLike,
    specs: Iterable[TensorSpec],
    produce: Callable[[TensorSpec], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write the tensors `specs` (in order), calling `produce(spec)` for each one's data.

    Only one produced tensor is alive at a time. Returns the number of data bytes written.
    """
    specs = list(specs)
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for spec in specs:
        if np.dtype(spec.dtype) not in CODES:
            raise ValueError(f"{spec.name}: dtype {spec.dtype} has no safetensors code")
        header[spec.name] = {
            "dtype": CODES[np.dtype(spec.dtype)],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for spec in specs:
            array = produce(spec)
            if tuple(array.shape) != tuple(spec.shape) or array.dtype != np.dtype(spec.dtype):
                raise ValueError(
                    f"{spec.name}: produced {array.dtype}{list(array.shape)}, "
                    f"declared {np.dtype(spec.dtype)}{list(spec.shape)}"
                )
            f.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
    return offset
