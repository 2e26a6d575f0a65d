"""`alexatm-data prepare`: the pretraining corpus as tokenised documents per corpus unit.

A unit is one source and language (`local_en`); the denoising and CLM tasks of a language share
it. Each unit/split is read once, unshuffled, through the tasks' own document steps
(`pretraining.document_steps`: UTF-8 repair, strip, empty removal, long-document split,
decontamination, spoken form, SentencePiece, [CLM]/[DOC] removal) with the same counters, and
written as parts (alexatm_jax/data/prepared_format.py). The template and the objectives are
applied when the data is read (`mixture_recipe` says how).

Resumable: every finished unit/split leaves a done record (tasks/prepared_records.py) with the
digest of its inputs; a re-run skips those whose inputs are unchanged. `num_workers` /
`worker_index` split every unit's files among workers (file i goes to worker i mod N), and
`finalize` writes the manifest from their done records.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
import tqdm

from alexatm_jax import storage
from alexatm_jax.data.prepared_format import (
    PartInfo,
    canonical_digest,
    file_digest,
    read_manifest,
    unit_name,
    write_part,
)
from tasks import corpus_files, pretraining
from tasks.counters import COUNTERS, ScopedCounters
from tasks.prepared_records import (
    PLAN,
    collect_done,
    done_path,
    merge_manifest,
    read_json,
    settings_difference,
    write_json,
    write_manifest_if_changed,
)
from tasks.sources import SPLITS
from tasks.vocabularies import make_vocabulary, read_special_ids, vocabulary_path

DEFAULT_DOCUMENTS_PER_PART = 100_000
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256


@dataclasses.dataclass(frozen=True)
class Unit:
    """One corpus unit to prepare: its source label, language and raw files (sorted)."""

    name: str
    source: str
    language: str
    files: tuple[str, ...]


def _vocab_path(config: pretraining.MixtureConfig) -> str:
    return config.vocab_path or vocabulary_path()


def _source_settings(mixture: str, config: pretraining.MixtureConfig) -> dict[str, Any]:
    if mixture == pretraining.LOCAL_MIXTURE:
        return {"kind": "local"}
    if mixture == pretraining.PRETRAIN_MIXTURE:
        return {
            "kind": "tfds",
            "wikipedia": config.wikipedia_tfds_name,
            "mc4": config.mc4_tfds_name,
        }
    raise ValueError(
        f"{mixture!r} is not a pretraining mixture; prepared data exists for "
        f"{pretraining.LOCAL_MIXTURE} (and {pretraining.PRETRAIN_MIXTURE}'s settings)"
    )


def preparation_settings(mixture: str, config: pretraining.MixtureConfig) -> dict[str, Any]:
    """Every setting that changes the prepared tokens, as JSON (reads the vocabulary and the
    n-gram file, never the raw data). The languages are not among them: a run uses the prepared
    units of its configured languages (`mixture_recipe`)."""
    return {
        "vocabulary_sha256": file_digest(_vocab_path(config)),
        "max_document_bytes": config.max_document_bytes,
        "spoken_share": config.spoken_share,
        "ngrams_sha256": file_digest(config.ngrams_path) if config.ngrams_path else None,
        "validation_per_mille": config.validation_per_mille,
        "source": _source_settings(mixture, config),
    }


def mixture_recipe(
    mixture: str, config: pretraining.MixtureConfig, units: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """What the reader needs: the tasks over the prepared `units` ({unit: {"source",
    "language", ...}}, a manifest's "units") with the current registry's normalised rates, the
    objective settings and the special ids of the current vocabulary."""
    unit_of = {(entry["source"], entry["language"]): unit for unit, entry in units.items()}
    present = [code for code in config.languages if code in {lang for _, lang in unit_of}]
    missing = [code for code in config.languages if code not in present]
    if missing and present:
        logging.warning(
            "prepared data: no units for %s; left out, language rates renormalised over %s",
            ", ".join(missing),
            ", ".join(present),
        )
    specs = [
        spec
        for spec in pretraining.task_specs(mixture, config, present)
        if (spec.source, spec.language) in unit_of
    ]
    if not specs:
        raise ValueError(
            f"the prepared units {sorted(units)} hold none of {mixture}'s configured languages "
            f"{list(config.languages)}"
        )
    total = sum(spec.rate for spec in specs)
    ids = read_special_ids(_vocab_path(config))
    return {
        "tasks": {
            spec.name: {
                "unit": unit_of[spec.source, spec.language],
                "objective": spec.objective,
                "language": spec.language,
                "source": spec.source,
                "rate": spec.rate / total,
            }
            for spec in specs
        },
        "noise_rate": config.noise_rate,
        "poisson_lambda": config.poisson_lambda,
        "clm_split_low": config.clm_split_low,
        "clm_split_high": config.clm_split_high,
        "special_ids": {
            "eos": ids.eos,
            "clm": ids.clm,
            "doc": ids.doc,
            "bos": ids.bos,
            "space": ids.space,
            "pad": ids.pad,
            "release_template": ids.release_template,
        },
        "vocab_size": ids.vocab_size,
    }


def check_prepared(
    directory: str, mixture: str, config: pretraining.MixtureConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, current `mixture_recipe` over its units) of prepared data that matches
    `mixture` and the current settings; ValueError naming each differing field and the fix."""
    manifest = read_manifest(directory)
    fix = (
        f"re-run `alexatm-data prepare --mixture {mixture} ... --out {directory}`, or point "
        "train.prepared_data at data prepared with this vocabulary/registry"
    )
    if manifest["mixture"] != mixture:
        raise ValueError(
            f"{directory} holds data prepared for {manifest['mixture']}, not {mixture}: {fix}"
        )
    now = preparation_settings(mixture, config)
    if canonical_digest(now) != manifest["preparation_digest"]:
        raise ValueError(
            f"{directory} was prepared with other settings "
            f"({settings_difference(manifest['preparation'], now)}): {fix}"
        )
    recipe = mixture_recipe(mixture, config, manifest["units"])
    if manifest.get("tasks") and canonical_digest(recipe) != manifest.get("tasks_digest"):
        logging.info(
            "prepared data: the task definitions differ from those it was prepared under "
            "(%s); reading with the current ones",
            settings_difference(_flat(manifest["tasks"]), _flat(recipe)),
        )
    return manifest, recipe


def _flat(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe as {dotted key: value}, for naming what changed."""
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            out[key] = value
    return out


def plan_units(
    mixture: str, data_dir: str | None, config: pretraining.MixtureConfig
) -> tuple[list[Unit], dict[str, str]]:
    """(the units to prepare, {path: why} of the files skipped while scanning DATA_DIR)."""
    if mixture != pretraining.LOCAL_MIXTURE:
        raise ValueError(
            f"`alexatm-data prepare` reads local files ({pretraining.LOCAL_MIXTURE}); for "
            f"{mixture}, export the TFDS text to DATA_DIR/<lang>/*.jsonl and prepare "
            f"{pretraining.LOCAL_MIXTURE}, or train {mixture} through SeqIO (no prepared data)"
        )
    layout, wanted = pretraining.local_corpus(data_dir, config)
    skipped = {path: "unreadable, or named .gz but not gzip data" for path in layout.bad_files}
    units = [
        Unit(unit_name("local", lang), "local", lang, tuple(sorted(layout.files[lang])))
        for lang in wanted
    ]
    return units, skipped


def unit_documents(
    source: seqio.DataSource,
    split: str,
    *,
    vocabulary: seqio.Vocabulary,
    config: pretraining.MixtureConfig,
    counters: ScopedCounters,
) -> tf.data.Dataset:
    """int32 [n] token ids of every document of `source`'s `split`: one pass, in the source's
    order (shuffle off), through the tasks' document steps (no template, no objective)."""
    ds = source.get_dataset(split, shuffle=False, seed=0)
    for step in pretraining.document_steps(
        vocabulary=vocabulary, counters=counters, config=config, salt=0
    ):
        ds = step(ds)
    return ds.map(tf.autograph.experimental.do_not_convert(lambda ex: ex["tokens"]))


def _source_entry(path: str) -> dict[str, Any]:
    """{"path", "bytes", "sha256"} of a raw file (the digest cached by size and mtime)."""
    size, mtime = corpus_files.file_version(path)
    key = (path, size, mtime)
    if key not in _digests:
        _digests[key] = file_digest(path)
    return {"path": path, "bytes": size, "sha256": _digests[key]}


def _write_parts(
    out: str,
    unit: str,
    split: str,
    documents: Iterator[np.ndarray],
    *,
    worker: int,
    num_workers: int,
    documents_per_part: int,
    doc_id: int,
) -> list[PartInfo]:
    """Write `documents` as parts of at most `documents_per_part` documents; worker w of N
    numbers its parts w, w + N, w + 2N, ..."""
    parts: list[PartInfo] = []
    while (first := next(documents, None)) is not None:
        chunk = itertools.chain([first], itertools.islice(documents, documents_per_part - 1))
        index = len(parts) * num_workers + worker
        parts.append(write_part(out, unit, split, index, chunk, doc_id=doc_id))
    return parts


def _prepare_unit_split(
    out: str,
    unit: Unit,
    split: str,
    *,
    config: pretraining.MixtureConfig,
    preparation_digest: str,
    worker: int,
    num_workers: int,
    documents_per_part: int,
    progress: bool,
) -> dict[str, Any]:
    """The done record of one unit/split (and worker): the one on disk when its inputs are
    unchanged, else a new one after writing its parts."""
    root = storage.as_path(out)
    files = unit.files[worker::num_workers]
    inputs = {
        "preparation_digest": preparation_digest,
        "unit": unit.name,
        "split": split,
        "worker": worker,
        "num_workers": num_workers,
        "documents_per_part": documents_per_part,
        "sources": [_source_entry(path) for path in files],
    }
    digest = canonical_digest(inputs)
    done = root / done_path(unit.name, split, worker, num_workers)
    old = read_json(done)
    if old is not None and old["inputs_digest"] == digest:
        logging.info("%s/%s is prepared already; skipped", unit.name, split)
        return old
    if old is not None:
        done.unlink()
    # A scope of its own: the counts are this run's, whatever the process read before.
    scope = f"prepare {unit.name}/{split} {uuid.uuid4().hex[:12]}"
    parts: list[PartInfo] = []
    if files:
        vocab_path = _vocab_path(config)
        stream = unit_documents(
            pretraining.local_source(files, unit.language, config, name=scope),
            split,
            vocabulary=make_vocabulary(vocab_path),
            config=config,
            counters=ScopedCounters(scope),
        ).as_numpy_iterator()
        bar = tqdm.tqdm(
            stream, desc=f"{unit.name}/{split}", unit=" docs", disable=not progress, leave=False
        )
        parts = _write_parts(
            out,
            unit.name,
            split,
            iter(bar),
            worker=worker,
            num_workers=num_workers,
            documents_per_part=documents_per_part,
            doc_id=read_special_ids(vocab_path).doc,
        )
        bar.close()
    written = {path for part in parts for path in (part.tokens_path, part.starts_path)}
    for stale in old["parts"] if old else []:  # parts of the old record beyond the new ones
        for path in {stale["tokens_path"], stale["starts_path"]} - written:
            (root / path).unlink(missing_ok=True)
    record = {
        "inputs_digest": digest,
        "inputs": inputs,
        "parts": [part.to_json() for part in parts],
        "counters": COUNTERS.snapshot().get(scope, {}),
        "bad_files": {p: why for p, why in COUNTERS.bad_files().items() if p in files},
    }
    write_json(done, record)
    return record


def _plan(
    mixture: str,
    config: pretraining.MixtureConfig,
    units: Sequence[Unit],
    skipped: Mapping[str, str],
    splits: Sequence[str],
    num_workers: int,
) -> dict[str, Any]:
    settings = preparation_settings(mixture, config)
    return {
        "mixture": mixture,
        "preparation": settings,
        "preparation_digest": canonical_digest(settings),
        "units": {unit.name: {"source": unit.source, "language": unit.language} for unit in units},
        "splits": list(splits),
        "num_workers": num_workers,
        "skipped_files": dict(skipped),
    }


def prepare_shard(
    mixture: str,
    *,
    data_dir: str | None,
    config: pretraining.MixtureConfig,
    out: str,
    splits: Sequence[str] = SPLITS,
    documents_per_part: int = DEFAULT_DOCUMENTS_PER_PART,
    worker_index: int = 0,
    num_workers: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Prepare worker `worker_index`'s files of every unit/split (all of them for one worker)
    and write plan.json; returns {"<unit>/<split>": done record}. The manifest is written by
    `finalize` (or by `prepare`)."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be some of {list(SPLITS)}, got {list(splits)}")
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"need 0 <= worker_index < num_workers, got {worker_index}, {num_workers}")
    if documents_per_part < 1:
        raise ValueError(f"documents_per_part must be >= 1, got {documents_per_part}")
    units, skipped = plan_units(mixture, data_dir, config)
    plan = _plan(mixture, config, units, skipped, splits, num_workers)
    root = storage.as_path(out)
    root.mkdir(parents=True, exist_ok=True)
    if read_json(root / PLAN) != plan:
        write_json(root / PLAN, plan)
    return {
        f"{unit.name}/{split}": _prepare_unit_split(
            out,
            unit,
            split,
            config=config,
            preparation_digest=plan["preparation_digest"],
            worker=worker_index,
            num_workers=num_workers,
            documents_per_part=documents_per_part,
            progress=progress,
        )
        for unit in units
        for split in splits
    }


def finalize(out: str, mixture: str, config: pretraining.MixtureConfig) -> dict[str, Any]:
    """Write `out`'s manifest from plan.json and every worker's done records (unless the
    manifest there is the same but for its time); returns it. ValueError naming what is
    unfinished, or which settings differ from the plan's."""
    root = storage.as_path(out)
    plan = read_json(root / PLAN)
    if plan is None:
        raise FileNotFoundError(
            f"{out} has no {PLAN}: run `alexatm-data prepare --out {out}` (every worker) first"
        )
    if plan["mixture"] != mixture:
        raise ValueError(f"{out} was planned for {plan['mixture']}, not {mixture}")
    now = preparation_settings(mixture, config)
    if canonical_digest(now) != plan["preparation_digest"]:
        raise ValueError(
            f"{out} was prepared with other settings "
            f"({settings_difference(plan['preparation'], now)}): finalize with the workers' "
            "settings, or prepare again with these"
        )
    records = collect_done(root, plan)
    vocab_path = _vocab_path(config)
    ids = read_special_ids(vocab_path)
    vocabulary = {
        "path": vocab_path,
        "sha256": now["vocabulary_sha256"],
        "size": ids.vocab_size,
        "special_ids": dataclasses.asdict(ids),
    }
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    manifest = merge_manifest(plan, records, vocabulary=vocabulary, created=created)
    # The task definitions it was prepared under (rates, noise, CLM split, special ids), for the
    # record: a run reads with its own registry's (check_prepared logs what changed).
    recipe = mixture_recipe(mixture, config, manifest["units"])
    manifest.update(tasks=recipe, tasks_digest=canonical_digest(recipe))
    if not write_manifest_if_changed(root, manifest):
        manifest = read_manifest(out)
    return manifest


def prepare(
    mixture: str,
    *,
    data_dir: str | None,
    config: pretraining.MixtureConfig,
    out: str,
    splits: Sequence[str] = SPLITS,
    documents_per_part: int = DEFAULT_DOCUMENTS_PER_PART,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare every unit/split of `mixture` into `out` (local or gs://) and write its manifest
    last; returns the manifest. Resumable and idempotent (see the module doc)."""
    prepare_shard(
        mixture,
        data_dir=data_dir,
        config=config,
        out=out,
        splits=splits,
        documents_per_part=documents_per_part,
        progress=progress,
    )
    return finalize(out, mixture, config)
