"""The on-disk layout of prepared pretraining data (`alexatm-data prepare`), numpy only.

A prepared directory (local or `gs://`) holds, per corpus unit (one source and language, e.g.
`local_en`, `mc4_hi`; a unit is shared by its language's denoising and CLM tasks) and split:

    <unit>/<split>/part-00000.tokens   uint32 little-endian token ids: every document followed
                                       by the vocabulary's [DOC] id, documents back to back
    <unit>/<split>/part-00000.starts   int64 little-endian [documents + 1]: the token offset of
                                       each document's first token in the part, then its length
    manifest.json                      written last: what was built, from what (see below)

A flat token array per part, not one record per document: a denoising row is a window of
L_t - 1 tokens of the documents laid end to end, so it is one contiguous read wherever it falls,
and a CLM document is one read too (`starts[d]:starts[d+1] - 1`). Local parts are memory-mapped;
remote parts are read by byte range.

`manifest.json`: {"format", "mixture", "preparation" (every setting that changes the tokens),
"preparation_digest", "vocabulary" {"path", "sha256", "size", "special_ids"}, "sources"
[{"path", "bytes", "sha256"}], "units" {unit: {"source", "language", "splits": {split:
{"parts": [PartInfo...], "documents", "tokens"}}}}, "counters", "bad_files", "created",
"tasks" and "tasks_digest" (the task definitions it was prepared under: rates, noise, CLM split,
special ids; a run reads with its own registry's)}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from alexatm_jax import storage

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LENGTH_SAMPLE = 256
TOKEN_DTYPE = np.dtype("<u4")
START_DTYPE = np.dtype("<i8")


def unit_name(source: str, language: str) -> str:
    """The unit of one source and language, e.g. `local_en`."""
    return f"{source}_{language}"


def canonical_digest(value: Any) -> str:
    """sha256 (hex) of `value` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """sha256 (hex) of a local or remote file's bytes."""
    digest = hashlib.sha256()
    with storage.as_path(path).open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class PartInfo:
    """One written part: paths relative to the prepared directory, its sizes and digest."""

    tokens_path: str
    starts_path: str
    documents: int
    tokens: int
    sha256: str  # of the .tokens file
    # Token counts ([DOC] excluded) of up to LENGTH_SAMPLE documents spread evenly over the part:
    # lets a reader plan CLM packing without reading the part.
    length_sample: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "length_sample": list(self.length_sample)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PartInfo:
        fields = {field.name: value[field.name] for field in dataclasses.fields(cls)}
        return cls(**{**fields, "length_sample": tuple(fields["length_sample"])})


def part_paths(unit: str, split: str, index: int) -> tuple[str, str]:
    """(tokens, starts) paths of part `index`, relative to the prepared directory."""
    stem = f"{unit}/{split}/part-{index:05d}"
    return f"{stem}.tokens", f"{stem}.starts"


def write_part(
    directory: str,
    unit: str,
    split: str,
    index: int,
    documents: Iterable[np.ndarray],
    *,
    doc_id: int,
) -> PartInfo:
    """Write the token ids of `documents` (each non-empty) as part `index` of `unit`/`split`.

    Each document is followed by `doc_id`. The files are written under temporary names and
    renamed over any earlier version, so a part either exists whole or not at all.
    """
    tokens_rel, starts_rel = part_paths(unit, split, index)
    root = storage.as_path(directory)
    (root / tokens_rel).parent.mkdir(parents=True, exist_ok=True)
    starts, total = [0], 0
    digest = hashlib.sha256()
    tmp_tokens = root / (tokens_rel + ".tmp")
    with tmp_tokens.open("wb") as out:
        for document in documents:
            ids = np.asarray(document)
            if ids.ndim != 1 or ids.size == 0:
                raise ValueError(f"a document must be a non-empty 1-D id array, got {ids.shape}")
            data = np.append(ids, doc_id).astype(TOKEN_DTYPE).tobytes()
            out.write(data)
            digest.update(data)
            total += ids.size + 1
            starts.append(total)
    offsets = np.asarray(starts, START_DTYPE)
    tmp_starts = root / (starts_rel + ".tmp")
    tmp_starts.write_bytes(offsets.tobytes())
    tmp_tokens.replace(root / tokens_rel)
    tmp_starts.replace(root / starts_rel)
    lengths = np.diff(offsets) - 1
    picked = np.unique(
        np.linspace(0, lengths.size - 1, min(LENGTH_SAMPLE, lengths.size)).astype(int)
    )
    return PartInfo(
        tokens_rel,
        starts_rel,
        lengths.size,
        total,
        digest.hexdigest(),
        tuple(int(n) for n in lengths[picked]) if lengths.size else (),
    )


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> str:
    """Write `manifest.json` (via a temporary file renamed over any earlier one); returns its
    path."""
    root = storage.as_path(directory)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(dict(manifest), indent=1, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST)
    return str(root / MANIFEST)


def read_manifest(directory: str) -> dict[str, Any]:
    """The manifest of a prepared directory; FileNotFoundError / ValueError naming the fix."""
    path = storage.as_path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} holds no prepared data ({MANIFEST} is missing); build it with "
            f"`alexatm-data prepare --out {directory}` (an interrupted prepare resumes where "
            "it stopped)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format {manifest.get('format')!r}, this version reads format "
            f"{FORMAT_VERSION}: prepare the data again with this version's `alexatm-data prepare`"
        )
    return manifest


class _Part:
    """Random access to one part: memory maps locally, byte ranges remotely (one handle per
    thread). Nothing but the last document offset is read up front, so opening a part costs
    the same at any corpus size."""

    def __init__(self, directory: str, info: PartInfo) -> None:
        root = storage.as_path(directory)
        self.info = info
        self._paths = (str(root / info.tokens_path), str(root / info.starts_path))
        self._local = threading.local()
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        if not storage.is_remote(self._paths[0]):
            self._arrays = (
                np.memmap(self._paths[0], TOKEN_DTYPE, mode="r", shape=(info.tokens,)),
                np.memmap(self._paths[1], START_DTYPE, mode="r", shape=(info.documents + 1,)),
            )
        if self.starts(info.documents, info.documents + 1)[0] != info.tokens:
            raise ValueError(
                f"{self._paths[1]} does not match the manifest ({info.documents} documents, "
                f"{info.tokens} tokens): the prepared data is damaged; prepare it again"
            )

    def _read(self, which: int, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
        if self._arrays is not None:
            return np.asarray(self._arrays[which][start:stop])
        handles = getattr(self._local, "handles", None)
        if handles is None:  # epath's gs:// open() is a context manager: keep it entered
            self._local.files = contextlib.ExitStack()
            handles = self._local.handles = [
                self._local.files.enter_context(storage.as_path(p).open("rb")) for p in self._paths
            ]
        handles[which].seek(start * dtype.itemsize)
        return np.frombuffer(handles[which].read((stop - start) * dtype.itemsize), dtype)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of this part (int32)."""
        return self._read(0, TOKEN_DTYPE, start, stop).astype(np.int32)

    def starts(self, start: int, stop: int) -> np.ndarray:
        """Document offsets [start, stop) of this part (int64)."""
        return self._read(1, START_DTYPE, start, stop).astype(np.int64)


class UnitTokens:
    """One unit's split as one virtual token array (its parts back to back).

    `window(start, n)` is any n consecutive tokens ([DOC] separators included);
    `document(d)` is document d's tokens without its [DOC].
    """

    def __init__(self, directory: str, split_entry: Mapping[str, Any]) -> None:
        self.parts = [_Part(directory, PartInfo.from_json(p)) for p in split_entry["parts"]]
        sizes = [part.info.tokens for part in self.parts]
        counts = [part.info.documents for part in self.parts]
        self.part_token_offsets = np.cumsum([0] + sizes)
        self.part_document_offsets = np.cumsum([0] + counts)
        self.num_tokens = int(self.part_token_offsets[-1])
        self.num_documents = int(self.part_document_offsets[-1])
        if self.num_documents == 0:
            raise ValueError("a prepared split with no documents cannot be read")

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the virtual array (int32 [length])."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside {self.num_tokens}")
        pieces, position, stop = [], start, start + length
        while position < stop:
            index = int(np.searchsorted(self.part_token_offsets, position, side="right")) - 1
            base = int(self.part_token_offsets[index])
            end = min(stop, int(self.part_token_offsets[index + 1]))
            pieces.append(self.parts[index].tokens(position - base, end - base))
            position = end
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def document(self, document: int) -> np.ndarray:
        """Document `document`'s tokens without its trailing [DOC] (int32)."""
        part, local = self._locate(document)
        start, stop = self.parts[part].starts(local, local + 2)
        return self.parts[part].tokens(int(start), int(stop) - 1)

    def length_sample(self) -> np.ndarray:
        """Document lengths ([DOC] excluded) sampled evenly over the parts, each part's sample
        repeated in proportion to its documents (int64)."""
        samples = [
            np.repeat(
                part.info.length_sample, -(-part.info.documents // len(part.info.length_sample))
            )
            for part in self.parts
            if part.info.length_sample
        ]
        return np.concatenate(samples) if samples else np.zeros([0], np.int64)

    def _locate(self, document: int) -> tuple[int, int]:
        if not 0 <= document < self.num_documents:
            raise IndexError(f"document {document} outside {self.num_documents}")
        part = int(np.searchsorted(self.part_document_offsets, document, side="right")) - 1
        return part, document - int(self.part_document_offsets[part])
