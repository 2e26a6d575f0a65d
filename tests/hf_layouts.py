"""Writes tiny datasets in HuggingFace's on-disk layouts (without the `datasets` package): the
`save_to_disk` directory, Hub-style parquet files, and the datasets cache's arrow files."""

from __future__ import annotations

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq


def _write_stream(path: pathlib.Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def save_to_disk(directory: pathlib.Path, splits: dict[str, list[dict]]) -> None:
    """As `DatasetDict.save_to_disk(directory)`: dataset_dict.json + <split>/{arrow, state}."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for split, rows in splits.items():
        name = "data-00000-of-00001.arrow"
        _write_stream(directory / split / name, rows)
        (directory / split / "state.json").write_text(
            json.dumps({"_data_files": [{"filename": name}], "_split": split})
        )
        (directory / split / "dataset_info.json").write_text("{}")


def parquet(directory: pathlib.Path, splits: dict[str, list[dict]]) -> None:
    """As the Hub's parquet export: <directory>/<split>-00000-of-00001.parquet."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), directory / f"{split}-00000-of-00001.parquet")


def cache(root: pathlib.Path, name: str, config: str, splits: dict[str, list[dict]]) -> None:
    """As the datasets cache: <root>/<owner>___<name>/<config>/0.0.0/<hash>/<name>-<split>.arrow."""
    directory = root / name.replace("/", "___") / config / "0.0.0" / "abc123"
    for split, rows in splits.items():
        _write_stream(directory / f"{name.split('/')[-1]}-{split}.arrow", rows)
