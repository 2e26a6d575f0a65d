"""Export an already prepared TFDS dataset to the harness's JSONL schema (never downloads).

Supported: xsum, mlsum_de and mlsum_es (TFDS has MLSum only inside GEM: `gem/mlsum_de`,
`gem/mlsum_es`; there is no French one), the eight SuperGLUE tasks, squad_v2 and the WMT pairs
wmt14:fr-en, wmt16:de-en, wmt16:ro-en (`wmt14_translate/fr-en`, ...). The multilingual sets and
Flores-101 come from JSONL or HuggingFace files (see `data`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

Converter = Callable[[dict[str, Any]], dict[str, Any]]


def _text(value: Any) -> Any:
    """bytes -> str, arrays/lists of bytes -> list of str, numpy scalars -> Python scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _pick(*names: str, rename: dict[str, str] | None = None) -> Converter:
    rename = rename or {}
    return lambda e: {rename.get(n, n): _text(e[n]) for n in names}


def _multirc(e: dict[str, Any]) -> dict[str, Any]:
    out = _pick("paragraph", "question", "answer", "label")(e)
    idx = e["idx"]
    out["question_id"] = f"{_text(idx['paragraph'])}-{_text(idx['question'])}"
    return out


def _squad(e: dict[str, Any]) -> dict[str, Any]:
    out = _pick("context", "question")(e)
    out["answers"] = _text(e["answers"]["text"])
    return out


_SUPERGLUE_FIELDS = {
    "boolq": ("passage", "question", "label"),
    "cb": ("premise", "hypothesis", "label"),
    "copa": ("premise", "choice1", "choice2", "question", "label"),
    "rte": ("premise", "hypothesis", "label"),
    "wic": ("word", "sentence1", "sentence2", "label"),
    "wsc": ("text", "span1_text", "span2_text", "label"),
    "record": ("passage", "query", "entities", "answers"),
}

# task -> (TFDS name, {our split: TFDS split}, converter)
TFDS_SOURCES: dict[str, tuple[str, dict[str, str], Converter]] = {
    "xsum": ("xsum", {"train": "train", "test": "test"}, _pick("document", "summary")),
    **{
        f"mlsum_{lang}": (
            f"gem/mlsum_{lang}",
            {"train": "train", "test": "test"},
            _pick("text", "target", rename={"text": "document", "target": "summary"}),
        )
        for lang in ("de", "es")
    },
    **{
        f"{year}:{pair}": (
            f"{year}_translate/{pair}",
            {"validation": "validation", "test": "test"},
            _pick(*pair.split("-")),
        )
        for year, pair in (("wmt14", "fr-en"), ("wmt16", "de-en"), ("wmt16", "ro-en"))
    },
    **{
        task: (
            f"super_glue/{'wsc.fixed' if task == 'wsc' else task}",
            {"train": "train", "dev": "validation"},
            _pick(*fields),
        )
        for task, fields in _SUPERGLUE_FIELDS.items()
    },
    "multirc": ("super_glue/multirc", {"train": "train", "dev": "validation"}, _multirc),
    "squad_v2": ("squad/v2.0", {"train": "train", "dev": "validation"}, _squad),
}


def export_split(task: str, split: str, tfds_data_dir: str, data_dir: str) -> pathlib.Path:
    """Writes DATA_DIR/<task>/<split>.jsonl from the prepared TFDS copy under `tfds_data_dir`.

    Raises ValueError for unsupported tasks/splits and FileNotFoundError when the TFDS dataset
    is not prepared there (nothing is downloaded). Returns the written path.
    """
    if task not in TFDS_SOURCES:
        raise ValueError(f"no TFDS source for {task}; supported: {', '.join(TFDS_SOURCES)}")
    name, splits, convert = TFDS_SOURCES[task]
    if split not in splits:
        raise ValueError(f"{task} from TFDS has splits {list(splits)}, not {split!r}")
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=tfds_data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name} is not prepared under {tfds_data_dir}; "
            "prepare it there first (this tool never downloads)"
        )
    year, _, pair = task.partition(":")
    directory = f"{year}/{pair}" if pair else task
    out = pathlib.Path(data_dir) / directory / f"{split}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for example in tfds.as_numpy(builder.as_dataset(split=splits[split])):
            f.write(json.dumps(convert(example), ensure_ascii=False) + "\n")
    return out
