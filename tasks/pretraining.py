"""The pretraining tasks and mixtures: `alexatm_pretrain` (TFDS) and `alexatm_pretrain_local`.

Per language and source there is a denoising task and a CLM task, named
`alexatm_<source>_<lang>_<objective>` with source in {wiki, mc4, local}. Mixing rates:
  rate = objective share (denoise 0.8 / CLM 0.2) x q_lang x source share within the language,
q_lang = p^alpha / sum p^alpha over the languages present (alpha = 0.5, p from the counts file);
the Wikipedia share within a language is its natural share after upsampling Wikipedia x10.
SeqIO registries are global, so registration is a function of (config, data dir) that replaces
the previously registered tasks when its arguments change and does nothing when they do not.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

import gin
from tasks import corpus_files, languages
from tasks.counters import COUNTERS, ScopedCounters
from tasks.decontamination import contamination_check
from tasks.demo_files import DEMO_DATA_DIR
from tasks.mixing import stratified_sampler
from tasks.preprocessors.clm import causal_lm
from tasks.preprocessors.denoising import denoise
from tasks.preprocessors.documents import (
    prepare_documents,
    shuffle_documents,
    tokenize_documents,
)
from tasks.preprocessors.packing import pack_documents
from tasks.preprocessors.release_template import release_template, template_overhead
from tasks.preprocessors.seeds import task_salt
from tasks.sources import LocalTextSource, TfdsTextSource
from tasks.vocabularies import make_vocabulary, special_ids

PRETRAIN_MIXTURE = "alexatm_pretrain"
LOCAL_MIXTURE = "alexatm_pretrain_local"
OBJECTIVES = ("denoise", "clm")
# Features that describe an example but are not model inputs (kept by `alexatm-inspect`).
INFO_FEATURES = (
    "objective",
    "language",
    "source",
    "noise_mask",
    "clm_document_length",
    "clm_split_point",
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    """Every knob of the pretraining mixtures; the defaults follow the paper where it is explicit.

    vocab_path: SentencePiece model; None -> vocabulary_path() (gin, $ALEXATM_VOCAB, the trained
      demo vocabulary).
    counts_path: per-language sizes JSON; None -> tasks/language_counts.json.
    ngrams_path: n-gram file from `alexatm-decontaminate`; None -> no decontamination.
    max_document_bytes: longer documents are cut into pieces of at most this many bytes.
    validation_per_mille: documents (by text hash) held out as `validation` where the source has
      no validation split of its own (local files, Wikipedia).
    document_shuffle_buffer: documents per window of the stateless document shuffle.
    """

    vocab_path: str | None = None
    clm_share: float = 0.2
    spoken_share: float = 0.7
    language_alpha: float = 0.5
    wikipedia_upsampling: float = 10.0
    counts_path: str | None = None
    ngrams_path: str | None = None
    noise_rate: float = 0.15
    poisson_lambda: float = 3.0
    clm_split_low: float = 0.2
    clm_split_high: float = 0.8
    max_document_bytes: int = 100_000
    validation_per_mille: int = 20
    document_shuffle_buffer: int = 1024
    languages: tuple[str, ...] = tuple(languages.LANGUAGES)
    wikipedia_tfds_name: str = "wikipedia/20230601.{lang}:1.0.0"
    mc4_tfds_name: str = "c4/multilingual:3.1.0"
    tfds_data_dir: str | None = None

    def __post_init__(self):
        if not 0.0 < self.clm_share < 1.0:
            raise ValueError(f"clm_share must be in (0, 1), got {self.clm_share}")
        if not 0 <= self.validation_per_mille < 1000:
            raise ValueError(
                f"validation_per_mille must be in [0, 1000), got {self.validation_per_mille}"
            )
        for code in self.languages:
            languages.check_language(code)
        if self.ngrams_path and not os.path.exists(self.ngrams_path):
            raise FileNotFoundError(
                f"n-gram file {self.ngrams_path} does not exist; build it with "
                "alexatm-decontaminate"
            )


# --- preprocessing steps (SeqIO passes `sequence_length` to those that take it) ---------------


def _need_lengths(sequence_length: Mapping[str, int] | None) -> Mapping[str, int]:
    if (
        not sequence_length
        or not sequence_length.get("targets")
        or not sequence_length.get("inputs")
    ):
        raise ValueError(
            "the pretraining tasks need sequence_length={'inputs': L, 'targets': L}, got "
            f"{sequence_length}"
        )
    return sequence_length


def _tokenize(ds, *, vocabulary, counters, config):
    check = contamination_check(config.ngrams_path) if config.ngrams_path else None
    return tokenize_documents(
        ds,
        vocabulary=vocabulary,
        ids=special_ids(vocabulary),
        counters=counters,
        spoken_share=config.spoken_share,
        contaminated=check,
    )


def _budget(sequence_length, ids, objective: str) -> Mapping[str, int]:
    """The lengths left for an objective once the release template's tokens are reserved."""
    lengths = _need_lengths(sequence_length)
    if not ids.release_template:
        return lengths
    overhead = template_overhead(objective)
    return {k: v - overhead.get(k, 0) for k, v in lengths.items()}


def _template(ds, *, vocabulary, objective):
    ids = special_ids(vocabulary)
    if not ids.release_template:
        return ds
    if ids.space is None:
        raise ValueError(
            "the SentencePiece model has a BOS piece (the release's template) but no "
            "`\u2581` piece to put before [CLM]"
        )
    return release_template(ds, objective=objective, bos_id=ids.bos, space_id=ids.space)


def _pack_and_denoise(ds, sequence_length, *, vocabulary, salt, config, info):
    ids = special_ids(vocabulary)
    sequence_length = _budget(sequence_length, ids, "denoise")
    length = sequence_length["targets"] - 1  # room for EOS
    inputs_needed = int(length * (1 - config.noise_rate)) + 2
    if sequence_length["inputs"] < inputs_needed:
        logging.warning(
            "inputs length %d < ~%d: denoising inputs will be truncated (still subsequences)",
            sequence_length["inputs"],
            inputs_needed,
        )
    packed = pack_documents(ds, length=length, doc_id=ids.doc)
    return denoise(
        packed,
        eos_id=ids.eos,
        salt=salt,
        info=info,
        rate=config.noise_rate,
        poisson_lambda=config.poisson_lambda,
    )


def _causal_lm(ds, sequence_length, *, vocabulary, salt, counters, config, info):
    ids = special_ids(vocabulary)
    return causal_lm(
        ds,
        sequence_length=_budget(sequence_length, ids, "clm"),
        clm_id=ids.clm,
        eos_id=ids.eos,
        salt=salt,
        counters=counters,
        info=info,
        low=config.clm_split_low,
        high=config.clm_split_high,
    )


def document_steps(
    *,
    vocabulary: seqio.Vocabulary,
    counters: ScopedCounters,
    config: MixtureConfig,
    salt: int,
) -> list[Callable[[tf.data.Dataset], tf.data.Dataset]]:
    """The document-level steps every pretraining task starts with, {"text", "rng"} ->
    {"tokens": int32 [n], "rng"}: the stateless document shuffle (a pass-through on streams read
    with shuffle=False), UTF-8 repair / strip / empty removal / long-document split, then
    decontamination, spoken form, SentencePiece and [CLM]/[DOC] removal. `alexatm-data prepare`
    runs the same steps (tasks/preparation.py)."""
    return [
        functools.partial(shuffle_documents, window=config.document_shuffle_buffer, salt=salt),
        functools.partial(
            prepare_documents, max_bytes=config.max_document_bytes, counters=counters
        ),
        functools.partial(_tokenize, vocabulary=vocabulary, counters=counters, config=config),
    ]


def task_name(source: str, language: str, objective: str) -> str:
    """Registry name of one pretraining task, e.g. `alexatm_mc4_en_denoise`."""
    return f"alexatm_{source}_{language}_{objective}"


def build_task(
    name: str,
    source: seqio.DataSource,
    *,
    objective: str,
    language: str,
    source_label: str,
    vocabulary: seqio.Vocabulary,
    config: MixtureConfig,
) -> seqio.Task:
    """A denoising or CLM task over a source of {"text", "rng"} documents."""
    counters = ScopedCounters(name)
    info = {"objective": objective, "language": language, "source": source_label}
    salt = task_salt(name)
    steps = document_steps(vocabulary=vocabulary, counters=counters, config=config, salt=salt)
    if objective == "denoise":
        steps.append(
            functools.partial(
                _pack_and_denoise, vocabulary=vocabulary, salt=salt, config=config, info=info
            )
        )
    elif objective == "clm":
        steps.append(
            functools.partial(
                _causal_lm,
                vocabulary=vocabulary,
                salt=salt,
                counters=counters,
                config=config,
                info=info,
            )
        )
    else:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    steps.append(functools.partial(_template, vocabulary=vocabulary, objective=objective))
    features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary, add_eos=True, required=True),
    }
    return seqio.Task(
        name,
        source,
        output_features=features,
        preprocessors=steps,
        shuffle_buffer_size=None,  # shuffling is stateless, in shuffle_documents
    )


# --- registration -------------------------------------------------------------------------------

_installed: dict[str, tuple[object, list[str]]] = {}  # mixture -> (registration key, task names)


def _install(mixture: str, key: object, tasks: Sequence[tuple[seqio.Task, float]]) -> None:
    """Registers `tasks` and the mixture over them, replacing what `mixture` registered before."""
    _, old_names = _installed.pop(mixture, (None, []))
    for name in old_names:
        seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove(mixture)
    for task, _ in tasks:
        seqio.TaskRegistry.remove(task.name)
        seqio.TaskRegistry.add_provider(task.name, task)
    names = [task.name for task, _ in tasks]
    seqio.MixtureRegistry.add_provider(
        mixture,
        seqio.Mixture(
            mixture,
            [(task.name, rate) for task, rate in tasks],
            sample_fn=stratified_sampler(names),
        ),
    )
    _installed[mixture] = (key, names)


def _objective_rates(config: MixtureConfig) -> dict[str, float]:
    return {"denoise": 1.0 - config.clm_share, "clm": config.clm_share}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a pretraining mixture and its (unnormalised) mixing rate."""

    name: str
    source: str  # "wiki", "mc4" or "local"
    language: str
    objective: str  # one of OBJECTIVES
    rate: float  # objective share x q_lang x source share within the language


def task_specs(mixture: str, config: MixtureConfig, present: Sequence[str]) -> list[TaskSpec]:
    """The tasks of `mixture` over the languages `present` (q renormalised over them), in
    registration order (language, source, objective). The one place the rates are computed."""
    sizes = languages.load_language_sizes(config.counts_path)
    q = languages.sampling_rates({c: sizes[c].total for c in present}, config.language_alpha)
    if mixture == LOCAL_MIXTURE:
        shares = {lang: {"local": 1.0} for lang in present}
    elif mixture == PRETRAIN_MIXTURE:
        wiki = languages.wikipedia_shares(sizes, config.wikipedia_upsampling)
        shares = {lang: {"wiki": wiki[lang], "mc4": 1.0 - wiki[lang]} for lang in present}
    else:
        raise ValueError(
            f"unknown pretraining mixture {mixture!r}; expected {PRETRAIN_MIXTURE} or "
            f"{LOCAL_MIXTURE}"
        )
    return [
        TaskSpec(
            task_name(label, lang, objective), label, lang, objective, share * q[lang] * fraction
        )
        for lang in present
        for label, fraction in shares[lang].items()
        for objective, share in _objective_rates(config).items()
    ]


def mixture_rates(mixture: str) -> dict[str, float]:
    """Task name -> normalised mixing rate of a registered mixture ({name: 1.0} for a task)."""
    provider = seqio.get_mixture_or_task(mixture)
    if isinstance(provider, seqio.Task):
        return {provider.name: 1.0}
    rates = {task.name: provider.get_rate(task) for task in provider.tasks}
    total = sum(rates.values())
    return {name: rate / total for name, rate in rates.items()}


def tfds_sources(language: str, config: MixtureConfig) -> dict[str, TfdsTextSource]:
    """The TFDS sources of one language, {"wiki": Wikipedia, "mc4": mC4}."""
    return {
        "wiki": TfdsTextSource(
            config.wikipedia_tfds_name.format(lang=language),
            {"train": "train"},
            tfds_data_dir=config.tfds_data_dir,
            hash_validation_per_mille=config.validation_per_mille,
        ),
        "mc4": TfdsTextSource(
            config.mc4_tfds_name,
            {"train": language, "validation": f"{language}-validation"},
            tfds_data_dir=config.tfds_data_dir,
        ),
    }


def local_source(
    files: Sequence[str], language: str, config: MixtureConfig, name: str | None = None
) -> LocalTextSource:
    """The source of one language's local files; `name` (its counter scope) defaults to the
    unit, `local_<lang>`."""
    return LocalTextSource(
        files,
        name=name or f"local_{language}",
        max_document_bytes=config.max_document_bytes,
        validation_per_mille=config.validation_per_mille,
    )


def _tasks(
    specs: Sequence[TaskSpec],
    sources: Mapping[tuple[str, str], seqio.DataSource],
    *,
    vocabulary: seqio.Vocabulary,
    config: MixtureConfig,
) -> list[tuple[seqio.Task, float]]:
    """(task, rate) of each spec, over its (source label, language) source."""
    return [
        (
            build_task(
                spec.name,
                sources[spec.source, spec.language],
                objective=spec.objective,
                language=spec.language,
                source_label=spec.source,
                vocabulary=vocabulary,
                config=config,
            ),
            spec.rate,
        )
        for spec in specs
    ]


def register_pretrain_mixture(config: MixtureConfig | None = None) -> str:
    """Registers the TFDS tasks (Wikipedia and mC4 per language) and `alexatm_pretrain`.

    Idempotent for an equal config; returns the mixture name. No data is touched until a
    dataset is requested (TFDS data must then be prepared: docs/data.md#preparing-the-tfds-data).
    """
    config = config or MixtureConfig()
    if _installed.get(PRETRAIN_MIXTURE, (None,))[0] == config:
        return PRETRAIN_MIXTURE
    sources = {
        (label, lang): source
        for lang in config.languages
        for label, source in tfds_sources(lang, config).items()
    }
    specs = task_specs(PRETRAIN_MIXTURE, config, config.languages)
    vocabulary = make_vocabulary(config.vocab_path)
    _install(PRETRAIN_MIXTURE, config, _tasks(specs, sources, vocabulary=vocabulary, config=config))
    return PRETRAIN_MIXTURE


def _demo_data_dir() -> str:
    if os.path.isdir(DEMO_DATA_DIR):
        logging.info("local mixture: no data dir given, using the demo corpus %s", DEMO_DATA_DIR)
        return DEMO_DATA_DIR
    return ""


def local_corpus(
    data_dir: str | None, config: MixtureConfig
) -> tuple[corpus_files.CorpusLayout, list[str]]:
    """(what DATA_DIR holds, the configured languages found there, in config order).

    data_dir: the argument, else $ALEXATM_DATA_DIR, else the demo corpus data/sample. Unreadable
    files are counted in `bad_files`; raises ValueError when none of the languages is there.
    """
    data_dir = data_dir or os.environ.get(corpus_files.DATA_DIR_ENV) or _demo_data_dir()
    layout = corpus_files.corpus_layout(data_dir)
    for path in layout.bad_files:  # already logged by corpus_layout
        COUNTERS.note_bad_file("corpus", path, "unreadable, or named .gz but not gzip data")
    wanted = [lang for lang in config.languages if lang in layout.files]
    if not wanted:
        raise ValueError(
            f"{data_dir} has none of the configured languages {list(config.languages)}; "
            f"found {sorted(layout.files)}"
        )
    return layout, wanted


@gin.configurable
def register_local_mixture(
    data_dir: str | None = None, config: MixtureConfig | None = None
) -> corpus_files.CorpusLayout:
    """Registers local-file tasks and `alexatm_pretrain_local` for DATA_DIR/<lang>/*.

    data_dir: the argument (bind it in gin with `register_local_mixture.data_dir = %DATA_DIR`),
    else $ALEXATM_DATA_DIR, else the repository's demo corpus data/sample. Languages without
    files are left out with a warning and q is renormalised over the rest; a missing or empty
    DATA_DIR raises an error naming the fix. Idempotent for an equal (data dir, files, config).
    Returns what was found.
    """
    config = config or MixtureConfig()
    layout, wanted = local_corpus(data_dir, config)
    data_dir = layout.data_dir
    files = tuple((lang, tuple(layout.files[lang])) for lang in wanted)
    key = (data_dir if "://" in data_dir else os.path.abspath(data_dir), files, config)
    if _installed.get(LOCAL_MIXTURE, (None,))[0] == key:
        return layout
    left_out = [lang for lang in config.languages if lang not in layout.files]
    if left_out:
        logging.warning(
            "local mixture: no data for %s under %s; left out, language rates renormalised over %s",
            ", ".join(left_out),
            data_dir,
            ", ".join(wanted),
        )
    sources = {("local", lang): local_source(layout.files[lang], lang, config) for lang in wanted}
    specs = task_specs(LOCAL_MIXTURE, config, wanted)
    vocabulary = make_vocabulary(config.vocab_path)
    _install(LOCAL_MIXTURE, key, _tasks(specs, sources, vocabulary=vocabulary, config=config))
    return layout
