"""Evaluation data from local JSONL files: `DATA_DIR/<task>/<split>.jsonl`, one example per line.

Each task documents the fields it needs (see the task modules and README); missing files and
fields are reported with the path, the line number and what to fix.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterator, Sequence

Example = dict[str, Any]


def iter_jsonl(path: pathlib.Path, required: Sequence[str] = ()) -> Iterator[Example]:
    """The JSON objects of `path` one by one, each checked for the `required` keys."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: put the split there as JSONL (one JSON "
                                f"object per line with fields {list(required)})")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number} is not valid JSON ({e})") from e
            missing = [k for k in required if k not in example]
            if missing:
                raise ValueError(f"{path}:{number} lacks fields {missing}; every line needs "
                                 f"{list(required)}")
            yield example


def read_jsonl(path: pathlib.Path, required: Sequence[str] = (),
               limit: int | None = None) -> list[Example]:
    """The first `limit` (all when None) examples of `path`; an empty file is an error."""
    examples = []
    for example in iter_jsonl(path, required):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(example)
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def split_path(data_dir: str | pathlib.Path, task_dir: str, split: str) -> pathlib.Path:
    """`DATA_DIR/<task_dir>/<split>.jsonl`."""
    return pathlib.Path(data_dir) / task_dir / f"{split}.jsonl"


def task_split(data_dir: str | pathlib.Path, task_dir: str, split: str,
               required: Sequence[str] = (), limit: int | None = None) -> list[Example]:
    """Examples of `DATA_DIR/<task_dir>/<split>.jsonl` (see `read_jsonl`)."""
    return read_jsonl(split_path(data_dir, task_dir, split), required, limit)


def flores_sentences(data_dir: str | pathlib.Path, split: str, language: str, flores_code: str,
                     limit: int | None = None) -> list[str]:
    """Sentences of one Flores-101 language file, line-aligned across languages.

    Read from `DATA_DIR/flores101/<split>/<language>.jsonl` (field `sentence`) or, when that is
    absent, the official release layout `DATA_DIR/flores101/<split>/<flores_code>.<split>` (plain
    text, one sentence per line).
    """
    folder = pathlib.Path(data_dir) / "flores101" / split
    jsonl = folder / f"{language}.jsonl"
    if jsonl.is_file():
        return [e["sentence"] for e in read_jsonl(jsonl, ("sentence",), limit)]
    plain = folder / f"{flores_code}.{split}"
    if not plain.is_file():
        raise FileNotFoundError(f"no Flores-101 {split} data for {language}: expected {jsonl} "
                                f"(JSONL with a `sentence` field) or {plain} (official layout)")
    lines = plain.read_text(encoding="utf-8").splitlines()
    return lines[:limit] if limit is not None else lines
