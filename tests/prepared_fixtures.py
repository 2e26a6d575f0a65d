"""A small prepared-data directory of random documents, without TensorFlow (for reader tests).

The manifest and the recipe have the shapes `alexatm-data prepare` and
`tasks.preparation.mixture_recipe` produce; the documents are random ids, so the tests check the
reader's arithmetic, not the tokenizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alexatm_jax.data import prepared_format

LANGUAGES = {"en": 0.6, "fr": 0.3, "hi": 0.1}  # intended language rates
CLM_SHARE = 0.2
SPECIAL_IDS = {"eos": 1, "clm": 3, "doc": 4, "pad": 0, "bos": None, "space": None}


def write_prepared(
    directory: str, *, documents: int = 240, max_document_tokens: int = 300, parts: int = 2
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write random documents (ids 10..3999, 1..max_document_tokens long) for every language,
    `parts` parts per unit and split (validation: a tenth as many documents); returns
    (manifest, recipe)."""
    rng = np.random.default_rng(0)
    units = {}
    for language in LANGUAGES:
        unit = prepared_format.unit_name("local", language)
        splits = {}
        for split, count in (("train", documents), ("validation", max(1, documents // 10))):
            docs = [
                rng.integers(10, 4000, rng.integers(1, max_document_tokens + 1))
                for _ in range(count)
            ]
            chunks = np.array_split(np.arange(count), parts)
            infos = [
                prepared_format.write_part(
                    directory, unit, split, i, [docs[d] for d in chunk], doc_id=SPECIAL_IDS["doc"]
                )
                for i, chunk in enumerate(chunks)
                if chunk.size
            ]
            splits[split] = {
                "parts": [info.to_json() for info in infos],
                "documents": count,
                "tokens": sum(info.tokens for info in infos),
            }
        units[unit] = {"source": "local", "language": language, "splits": splits}
    manifest = {
        "format": prepared_format.FORMAT_VERSION,
        "mixture": "alexatm_pretrain_local",
        "preparation_digest": "test",
        "units": units,
        "counters": {"invalid_utf8_documents": 1},
        "bad_files": {},
    }
    return manifest, recipe(release_template=False)


def recipe(*, release_template: bool) -> dict[str, Any]:
    """The recipe of the test mixture (rates = objective share x language rate)."""
    tasks = {
        f"alexatm_local_{language}_{objective}": {
            "unit": prepared_format.unit_name("local", language),
            "objective": objective,
            "language": language,
            "source": "local",
            "rate": (CLM_SHARE if objective == "clm" else 1 - CLM_SHARE) * rate,
        }
        for language, rate in LANGUAGES.items()
        for objective in ("denoise", "clm")
    }
    ids = dict(SPECIAL_IDS, release_template=release_template)
    if release_template:
        ids.update(bos=2, space=5)
    return {
        "tasks": tasks,
        "noise_rate": 0.15,
        "poisson_lambda": 3.0,
        "clm_split_low": 0.2,
        "clm_split_high": 0.8,
        "special_ids": ids,
        "vocab_size": 4000,
    }
