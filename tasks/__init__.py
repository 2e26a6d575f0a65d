"""SeqIO registries of the AlexaTM pretraining data.

Registered on import (no data read, no directory scanned): the per-language Wikipedia/mC4
denoising and CLM tasks with the mixture `alexatm_pretrain`. `alexatm_pretrain_local` depends on
the files found under a DATA_DIR, so it is registered when asked for: `register_local_mixture()`,
`register_for()` or `get_dataset()` (DATA_DIR: the argument, gin, $ALEXATM_DATA_DIR, then the
repository's data/sample). `get_dataset` re-registers for the data dir / vocabulary / gin config
in effect. The fine-tuning task of the gin-bound `Seq2SeqTask` (tasks/seq2seq.py) is registered
the same way. See docs/data.md and docs/finetuning.md.
"""

import logging as _logging

from tasks.counters import COUNTERS
from tasks.dataset import DEFAULT_LENGTHS, MODEL_FEATURES, get_dataset, register_for
from tasks.languages import LANGUAGES
from tasks.pretraining import (
    INFO_FEATURES,
    LOCAL_MIXTURE,
    PRETRAIN_MIXTURE,
    MixtureConfig,
    mixture_rates,
    register_local_mixture,
    register_pretrain_mixture,
)
from tasks.seq2seq import Seq2SeqTask, register_seq2seq_task
from tasks.vocab_training import train_demo_vocabulary
from tasks.vocabularies import VOCAB_ENV, SpecialIds, read_special_ids, vocabulary_path


def pipeline_counters() -> dict[str, dict[str, int]]:
    """Skipped/repaired-input counters so far, as {scope (task or source): {counter: count}}."""
    return COUNTERS.snapshot()


def pipeline_counter_totals() -> dict[str, int]:
    """The counters over all tasks, {counter: count}; problem counters count each distinct bad
    record once (see tasks/counters.py)."""
    return COUNTERS.totals()


def bad_files() -> dict[str, str]:
    """{path: why} of the data files skipped so far (unreadable, not gzip, truncated or corrupt)."""
    return COUNTERS.bad_files()


def log_pipeline_counters() -> None:
    """Logs the non-zero pipeline counters summed over tasks (call it at the end of a run)."""
    totals = {name: value for name, value in COUNTERS.totals().items() if value}
    _logging.info("data pipeline counters: %s", totals or "all zero")


register_pretrain_mixture()

__all__ = [
    "DEFAULT_LENGTHS",
    "INFO_FEATURES",
    "LANGUAGES",
    "LOCAL_MIXTURE",
    "MODEL_FEATURES",
    "PRETRAIN_MIXTURE",
    "MixtureConfig",
    "Seq2SeqTask",
    "SpecialIds",
    "VOCAB_ENV",
    "get_dataset",
    "bad_files",
    "log_pipeline_counters",
    "mixture_rates",
    "pipeline_counter_totals",
    "pipeline_counters",
    "read_special_ids",
    "register_for",
    "register_local_mixture",
    "register_pretrain_mixture",
    "register_seq2seq_task",
    "train_demo_vocabulary",
    "vocabulary_path",
]
