"""Reads HuggingFace `datasets` data already on this machine, with pyarrow (never downloads).

Three layouts of one dataset (one config) in a directory DIR:

* `save_to_disk` output: `DIR/dataset_dict.json` + `DIR/<split>/{state.json, data-*.arrow}`, or
  a single split's `DIR/<split>/state.json`;
* parquet files as on the Hub: `DIR/<split>-*.parquet`, `DIR/<split>/*.parquet`,
  `DIR/data/<split>-*.parquet` or `DIR/<split>.parquet`;
* arrow files as in the datasets cache: `DIR/<name>-<split>.arrow`,
  `DIR/<name>-<split>-00000-of-00003.arrow` or `DIR/<split>.arrow`.

The datasets cache (`$HF_DATASETS_CACHE`, else `$HF_HOME/datasets`, else
`~/.cache/huggingface/datasets`) holds `<name>/<config>/<version>/<hash>/` directories of the third
kind; `<owner>/<name>` datasets are stored as `<owner>___<name>`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]


def _read_arrow(path: pathlib.Path) -> list[Row]:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    return table.to_pylist()


def read_parquet(path: pathlib.Path) -> list[Row]:
    """The rows of one parquet file."""
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pylist()


def split_files(directory: pathlib.Path, split: str) -> list[pathlib.Path]:
    """The arrow/parquet files holding `split` of the dataset in `directory` (empty if none)."""
    saved = directory / split / "state.json"
    if saved.is_file():
        state = json.loads(saved.read_text(encoding="utf-8"))
        return [directory / split / f["filename"] for f in state.get("_data_files", [])]
    for pattern in (
        f"{split}-*.parquet",
        f"{split}/*.parquet",
        f"data/{split}-*.parquet",
        f"{split}.parquet",
        f"*-{split}.arrow",
        f"*-{split}-*-of-*.arrow",
        f"{split}.arrow",
    ):
        found = sorted(directory.glob(pattern))
        if found:
            return found
    return []


def read_split(directory: pathlib.Path, split: str) -> tuple[list[Row], str] | None:
    """(rows, description of the files) of `split` in `directory`, or None when absent."""
    files = split_files(directory, split)
    if not files:
        return None
    rows: list[Row] = []
    for path in files:
        rows += read_parquet(path) if path.suffix == ".parquet" else _read_arrow(path)
    where = str(files[0]) if len(files) == 1 else f"{files[0].parent}/ ({len(files)} files)"
    return rows, where


def cache_root() -> pathlib.Path:
    """The local HuggingFace datasets cache directory."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return pathlib.Path(os.environ["HF_DATASETS_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache", "huggingface"
    )
    return pathlib.Path(home) / "datasets"


def cache_directories(names: Sequence[str], config: str) -> list[pathlib.Path]:
    """Cached `<name>/<config>/<version>/<hash>/` directories of any of the dataset `names`
    (e.g. "EdinburghNLP/xsum"), newest first."""
    root = cache_root()
    found = []
    for name in names:
        base = root / name.replace("/", "___") / config
        if base.is_dir():
            found += [d for d in base.glob("*/*") if d.is_dir()]
    return sorted(found, key=lambda d: d.stat().st_mtime, reverse=True)
