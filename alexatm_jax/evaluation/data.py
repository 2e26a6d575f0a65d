"""Evaluation data on this machine: our JSONL, HuggingFace `datasets` files, TFDS exports.

For one task and split the first of these that exists is read (nothing is ever downloaded):

1. `DATA_DIR/<dir>/<split>.jsonl`, one JSON object per line in our schema;
2. a HuggingFace dataset under `DATA_DIR/<dir>` (or one of the task's alternative directories,
   e.g. `DATA_DIR/super_glue/boolq`): `save_to_disk` output, parquet or arrow files
   (`hf_files`), with the HuggingFace split name (`validation` for our `dev`);
3. the local HuggingFace datasets cache, under the task's Hub names and config.

(TFDS datasets prepared on the machine are exported to the JSONL of 1 by `tfds_export`.)
HuggingFace rows are mapped to our schema by the task's converter. Every example carries
`_where` ("file:line" or "file row N") so that a bad field is reported with its place.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from etils import epath

from alexatm_jax.evaluation import hf_files
from alexatm_jax.storage import as_path

Example = dict[str, Any]
WHERE = "_where"


class DataError(ValueError):
    """A data file, line or field that cannot be used; the message names the place and the fix."""


def iter_jsonl(path: epath.Path, required: Sequence[str] = ()) -> Iterator[Example]:
    """The JSON objects of `path` one by one (with `_where`), each checked for `required` keys."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: put the split there as JSONL (one JSON "
            f"object per line with fields {list(required)})"
        )
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where} is not valid JSON ({e})") from e
            if not isinstance(example, dict):
                raise DataError(f"{where} is not a JSON object")
            check_fields(example, required, where)
            yield {**example, WHERE: where}


def check_fields(example: Example, required: Sequence[str], where: str) -> None:
    """DataError naming `where` when `example` lacks one of the `required` fields."""
    missing = [k for k in required if k not in example]
    if missing:
        raise DataError(f"{where} lacks fields {missing}; every example needs {list(required)}")


def read_jsonl(
    path: epath.Path, required: Sequence[str] = (), limit: int | None = None
) -> list[Example]:
    """The first `limit` (all when None) examples of `path`; an empty file is an error."""
    examples = []
    for example in iter_jsonl(path, required):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(example)
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def split_path(data_dir: str | os.PathLike, task_dir: str, split: str) -> epath.Path:
    """`DATA_DIR/<task_dir>/<split>.jsonl` (DATA_DIR local or a URL such as gs://b/eval)."""
    return as_path(data_dir) / task_dir / f"{split}.jsonl"


def identity(row: Example) -> Example:
    """`row` unchanged (the converter of sources already in our schema)."""
    return row


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a task's data may be and how HuggingFace rows become our examples.

    directory: our JSONL directory under DATA_DIR, also searched for HuggingFace files.
    alternatives: further directories under DATA_DIR holding HuggingFace files.
    hub: HuggingFace dataset names looked up in the datasets cache, with `config`.
    hf_splits: our split name -> HuggingFace split names to try.
    convert: HuggingFace row -> our fields (raise DataError naming the field when it cannot).
    """

    directory: str
    alternatives: tuple[str, ...] = ()
    hub: tuple[str, ...] = ()
    config: str = "default"
    hf_splits: tuple[tuple[str, tuple[str, ...]], ...] = (("dev", ("validation",)),)
    convert: Callable[[Example], Example] = identity

    def split_names(self, split: str) -> list[str]:
        """`split` and its HuggingFace names."""
        return [split] + list(dict(self.hf_splits).get(split, ()))

    def with_language(self, subdirectory: str, config: str, language: str) -> Source:
        """The source of one language config: `<directory>/<subdirectory>`, rows + `language`."""
        convert = self.convert
        return dataclasses.replace(
            self,
            directory=f"{self.directory}/{subdirectory}",
            alternatives=tuple(f"{a}/{subdirectory}" for a in self.alternatives),
            config=config,
            convert=lambda row: {**convert(row), "language": language},
        )


def _hf_rows(data_dir: epath.Path, source: Source, split: str) -> tuple[list[Example], str] | None:
    directories = [data_dir / d for d in (source.directory, *source.alternatives)]
    directories += hf_files.cache_directories(source.hub, source.config) if source.hub else []
    for directory in directories:
        if not directory.is_dir():
            continue
        for name in source.split_names(split):
            found = hf_files.read_split(directory, name)
            if found is not None:
                return found
    return None


def load_split(
    data_dir: str | os.PathLike,
    source: Source,
    split: str,
    required: Sequence[str] = (),
    limit: int | None = None,
) -> list[Example]:
    """The first `limit` examples of `split` from the first place that has it (module doc)."""
    data_dir = as_path(data_dir)
    jsonl = split_path(data_dir, source.directory, split)
    if jsonl.is_file():
        return read_jsonl(jsonl, required, limit)
    found = _hf_rows(data_dir, source, split)
    if found is None:
        tried = [str(jsonl)] + [
            f"{data_dir / d} (HuggingFace save_to_disk/parquet/arrow, split "
            f"{'/'.join(source.split_names(split))})"
            for d in (source.directory, *source.alternatives)
        ]
        if source.hub:
            tried.append(
                f"the datasets cache {hf_files.cache_root()} "
                f"({', '.join(source.hub)}, config {source.config})"
            )
        raise FileNotFoundError(
            f"no {split} data for {source.directory}: looked for " + "; ".join(tried)
        )
    rows, where = found
    examples = []
    for number, row in enumerate(rows[:limit] if limit is not None else rows):
        place = f"{where} row {number}"
        try:
            example = source.convert(row)
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(
                f"{place}: unexpected HuggingFace schema ({e!r}); expected the "
                f"fields of {source.hub[0] if source.hub else source.directory}"
            ) from e
        check_fields(example, required, place)
        examples.append({**example, WHERE: place})
    if not examples:
        raise DataError(f"{where} holds no examples")
    return examples


def field(example: Example, name: str, kind: type = str) -> Any:
    """`example[name]`, checked to be a `kind` (booleans never pass as numbers); DataError
    naming the place otherwise."""
    value = example.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(
            f"{example.get(WHERE, '?')}: field `{name}` must be a {kind.__name__}, got {value!r}"
        )
    return value
