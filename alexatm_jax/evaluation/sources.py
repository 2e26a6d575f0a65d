"""Where each evaluation task's data may be on this machine (see `data`), and the HuggingFace
dataset (Hub name, config, split names, row schema) each task reads:

* xsum: EdinburghNLP/xsum, in `xsum/`;
* mlsum_<de/es/fr>: mlsum config <lang>, in `mlsum_<lang>/` or `mlsum/<lang>/`;
* the SuperGLUE tasks: super_glue config <task> (wsc: wsc.fixed), in `<task>/` or
  `super_glue/<config>/`;
* squad_v2: rajpurkar/squad_v2 config squad_v2, in `squad_v2/`;
* xnli, xcopa, pawsx, xwinograd: facebook/xnli, cambridgeltl/xcopa,
  google-research-datasets/paws-x, Muennighoff/xwinograd with one config per language, as
  `<task>/<split>.jsonl` with `language` or `<task>/<config>/`;
* e2e_nlg: tuetschek/e2e_nlg, in `e2e_nlg/`;
* wmt14/wmt16:<pair>: wmt/wmt14, wmt/wmt16 config `<xx>-en`, in `<year>/<xx>-en/`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from etils import epath

from alexatm_jax.evaluation import data, hf_files
from alexatm_jax.evaluation.data import DataError, Example, Source
from alexatm_jax.storage import as_path

SUPERGLUE_CONFIGS = {
    "boolq": "boolq",
    "cb": "cb",
    "copa": "copa",
    "rte": "rte",
    "wic": "wic",
    "wsc": "wsc.fixed",
    "multirc": "multirc",
    "record": "record",
}
# HuggingFace config -> our language code where they differ.
LANGUAGE_OF_CONFIG = {"jp": "ja"}
LANGUAGE_CONFIGS = {
    "xnli": (
        "ar",
        "bg",
        "de",
        "el",
        "en",
        "es",
        "fr",
        "hi",
        "ru",
        "sw",
        "th",
        "tr",
        "ur",
        "vi",
        "zh",
    ),
    "xcopa": ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"),
    "pawsx": ("de", "en", "es", "fr", "ja", "ko", "zh"),
    "xwinograd": ("en", "fr", "jp", "pt", "ru", "zh"),
}
_MULTILINGUAL_HUB = {
    "xnli": ("facebook/xnli", "xnli"),
    "xcopa": ("cambridgeltl/xcopa", "xcopa"),
    "pawsx": ("google-research-datasets/paws-x", "paws-x"),
    "xwinograd": ("Muennighoff/xwinograd",),
}


def _multirc(row: Example) -> Example:
    if "question_id" in row:
        return row
    idx = row["idx"]
    return {**row, "question_id": f"{idx['paragraph']}-{idx['question']}"}


def _e2e(row: Example) -> Example:
    if "human_reference" in row:
        return row
    return {**row, "human_reference": row["target"]}  # the GEM version's field name


def source(task: str) -> Source:
    """The Source of a single-config task (`xsum`, `mlsum_de`, SuperGLUE, `squad_v2`, `e2e_nlg`)."""
    if task == "xsum":
        return Source("xsum", hub=("EdinburghNLP/xsum", "xsum"))
    if task.startswith("mlsum_"):
        lang = task.split("_", 1)[1]
        return Source(task, alternatives=(f"mlsum/{lang}",), hub=("mlsum",), config=lang)
    if task in SUPERGLUE_CONFIGS:
        config = SUPERGLUE_CONFIGS[task]
        return Source(
            task,
            alternatives=(f"super_glue/{config}",),
            hub=("aps/super_glue", "super_glue"),
            config=config,
            convert=_multirc if task == "multirc" else data.identity,
        )
    if task == "squad_v2":
        return Source("squad_v2", hub=("rajpurkar/squad_v2", "squad_v2"), config="squad_v2")
    if task == "e2e_nlg":
        return Source("e2e_nlg", hub=("tuetschek/e2e_nlg", "e2e_nlg", "GEM/e2e_nlg"), convert=_e2e)
    raise ValueError(f"no data source for {task}")


def wmt_source(year: str, source_lang: str, target_lang: str) -> Source:
    """WMT `year` data of the pair: HF config `<xx>-en`, rows {"translation": {xx, en}} (or our
    flat {xx: ..., en: ...}) -> {"source", "target"}."""
    config = "-".join(sorted((source_lang, target_lang), key=lambda c: c == "en"))

    def convert(row: Example) -> Example:
        pair = row.get("translation", row)
        return {"source": pair[source_lang], "target": pair[target_lang]}

    return Source(
        f"{year}/{config}",
        alternatives=(f"{year}_{config}",),
        hub=(f"wmt/{year}", year),
        config=config,
        convert=convert,
    )


def _language_configs(data_dir: epath.Path, task: str) -> list[str]:
    base = data_dir / task
    present = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    cached = [
        c for c in LANGUAGE_CONFIGS[task] if hf_files.cache_directories(_MULTILINGUAL_HUB[task], c)
    ]
    return present + [c for c in cached if c not in present]


def load_multilingual(
    data_dir: str | os.PathLike, task: str, split: str, required: Sequence[str], limit: int | None
) -> list[Example]:
    """Examples of a per-language task with their `language`, the first `limit` of each language.

    From `DATA_DIR/<task>/<split>.jsonl` (a `language` field on every line) or else one
    HuggingFace dataset per language config (`DATA_DIR/<task>/<config>/` or the cache).
    """
    data_dir = as_path(data_dir)
    jsonl = data.split_path(data_dir, task, split)
    if jsonl.is_file():
        examples, counts = [], {}
        for example in data.iter_jsonl(jsonl, tuple(required) + ("language",)):
            language = data.field(example, "language")
            counts[language] = counts.get(language, 0) + 1
            if limit is None or counts[language] <= limit:
                examples.append(example)
        if not examples:
            raise DataError(f"{jsonl} holds no examples")
        return examples
    base = Source(
        task, hub=_MULTILINGUAL_HUB[task], hf_splits=(("dev", ("validation",)), ("test", ("test",)))
    )
    examples = []
    for config in _language_configs(data_dir, task):
        language = LANGUAGE_OF_CONFIG.get(config, config)
        try:
            examples += data.load_split(
                data_dir, base.with_language(config, config, language), split, required, limit
            )
        except FileNotFoundError:
            continue
    if not examples:
        raise FileNotFoundError(
            f"no {split} data for {task}: put {jsonl} (JSONL with a `language` field) or one "
            f"HuggingFace dataset per language under {data_dir / task}/<config>/ (configs "
            f"{', '.join(LANGUAGE_CONFIGS[task])}), or have them in the datasets cache "
            f"{hf_files.cache_root()}"
        )
    return examples
