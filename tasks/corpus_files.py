"""Layout of a corpus DATA_DIR/<lang>/**/*.{txt,jsonl}[.gz], and a Python reader for it.

DATA_DIR is a local directory or a URL such as gs://bucket/corpus: files are listed, checked and
read through `etils.epath` (TensorFlow's gfile for gs://), as the TF pipeline reads them.

txt files hold documents separated by blank lines; jsonl files hold one JSON object per line
with the document in its `text` field. The TF pipeline reads the same files in graph mode
(tasks/file_readers.py); this module lists them and serves Python-side consumers (vocabulary
training, decontamination tooling).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

from etils import epath

from tasks.languages import LANGUAGES

FILE_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
DATA_DIR_ENV = "ALEXATM_DATA_DIR"
_GZIP_READ_BYTES = 1 << 20
_gzip_checks: dict[tuple[str, int, int], str | None] = {}
_gzip_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CorpusLayout:
    """What was found under a DATA_DIR: usable files per language and what was skipped."""

    data_dir: str
    files: dict[str, list[str]]  # language code -> sorted file paths
    unknown_dirs: list[str]  # subdirectories whose name is not one of the 12 codes
    empty_dirs: list[str]  # language directories without a readable file
    missing_languages: list[str]  # of the 12, those with no directory at all
    bad_files: list[str]  # unreadable files, or .gz files that are not gzip: skipped


def _is_url(path: str) -> bool:
    scheme, separator, _ = path.partition("://")
    return bool(separator) and scheme.isidentifier()


def _readable(path: str) -> bool:
    """Whether `path` can be opened and, for .gz, starts with the gzip magic bytes."""
    try:
        with epath.Path(path).open("rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return not path.endswith(".gz") or head in (b"", b"\x1f\x8b")


def file_version(path: str) -> tuple[int, int]:
    """(size in bytes, modification time: ns for a local file, s for a URL) of `path`."""
    if _is_url(path):
        info = epath.Path(path).stat()
        return info.length, info.mtime
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def gzip_problem(path: str) -> str | None:
    """Why the gzip file `path` cannot be read to its end (truncated, corrupt, CRC or length
    mismatch, unreadable), or None when it decompresses completely. Decompresses the whole file
    once; the answer is cached per process by (path, size, modification time)."""
    try:
        key = (path, *file_version(path))
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    with _gzip_lock:
        if key in _gzip_checks:
            return _gzip_checks[key]
    problem = None
    try:
        with epath.Path(path).open("rb") as raw, gzip.open(raw, "rb") as f:
            while f.read(_GZIP_READ_BYTES):
                pass
    except EOFError as error:
        problem = f"truncated gzip data ({error})"
    except (OSError, zlib.error) as error:
        problem = f"corrupt gzip data ({error})"
    with _gzip_lock:
        _gzip_checks[key] = problem
    return problem


def corpus_layout(data_dir: str) -> CorpusLayout:
    """Scans DATA_DIR for language directories and their data files.

    Raises FileNotFoundError / ValueError naming the fix when DATA_DIR does not exist or holds no
    usable language directory; unknown codes and empty directories are logged and skipped.
    """
    if not data_dir:
        raise ValueError(
            f"no data directory given: pass --data_dir, set ${DATA_DIR_ENV}, or bind the gin "
            "macro DATA_DIR (register_local_mixture.data_dir)"
        )
    root = epath.Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist")
    files, unknown, empty, bad = {}, [], [], []
    for child in sorted(root.iterdir()):
        name = child.name
        if not child.is_dir():
            continue
        if name not in LANGUAGES:
            unknown.append(name)
            continue
        found = sorted(
            os.fspath(folder / file)
            for folder, _, names in child.walk()
            for file in names
            if file.endswith(FILE_SUFFIXES) and not file.startswith(".")
        )
        bad += [p for p in found if not _readable(p)]
        found = [p for p in found if p not in bad]
        if found:
            files[name] = found
        else:
            empty.append(name)
    for name in unknown:
        logging.warning(
            "skipping %s: %r is not a language code of the mixture (%s)",
            os.path.join(data_dir, name),
            name,
            ", ".join(sorted(LANGUAGES)),
        )
    for path in bad:
        logging.warning("skipping %s: unreadable, or named .gz but not gzip data", path)
    for name in empty:
        logging.warning(
            "skipping language %s: %s has no %s files",
            name,
            os.path.join(data_dir, name),
            "/".join(FILE_SUFFIXES),
        )
    if not files:
        raise ValueError(
            f"data directory {data_dir} has no usable language directory: expected "
            f"DATA_DIR/<lang>/*{{{','.join(FILE_SUFFIXES)}}} with <lang> one of "
            f"{', '.join(sorted(LANGUAGES))} (found subdirectories: "
            f"{sorted(unknown + empty) or 'none'})"
        )
    missing = [code for code in LANGUAGES if code not in files and code not in empty]
    return CorpusLayout(data_dir, files, unknown, empty, missing, bad)


def language_files(data_dir: str) -> dict[str, list[str]]:
    """Language code -> sorted data files under DATA_DIR (see `corpus_layout`)."""
    return corpus_layout(data_dir).files


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[IO[str]]:
    """`path` (local or URL, gzip when named .gz) as text; undecodable bytes become U+FFFD."""
    with epath.Path(path).open("rb") as raw:
        binary = gzip.open(raw, "rb") if path.endswith(".gz") else raw
        with io.TextIOWrapper(binary, encoding="utf-8", errors="replace") as text:
            yield text


def iter_documents(paths: Iterable[str]) -> Iterator[str]:
    """Yields the documents of txt/jsonl(.gz) files in order; undecodable bytes become U+FFFD.

    jsonl lines that are not JSON objects with a string `text` field are skipped; a truncated or
    corrupt .gz file is skipped whole, with a warning naming it (as the TF reader does).
    """
    for path in paths:
        problem = gzip_problem(path) if path.endswith(".gz") else None
        if problem:
            logging.warning("skipping %s: %s; none of its lines are used", path, problem)
            continue
        with _open_text(path) as f:
            if ".jsonl" in os.path.basename(path):
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and isinstance(record.get("text"), str):
                        yield record["text"]
            else:
                lines: list[str] = []
                for line in f:
                    if line.strip():
                        lines.append(line.rstrip("\n"))
                    elif lines:
                        yield "\n".join(lines)
                        lines = []
                if lines:
                    yield "\n".join(lines)
