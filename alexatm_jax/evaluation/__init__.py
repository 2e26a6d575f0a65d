"""Few-shot / zero-shot evaluation (the paper's benchmarks): tasks, prompts, data, metrics, the
harness and suites."""

from alexatm_jax.evaluation.data import DataError
from alexatm_jax.evaluation.harness import (
    EvalResult,
    default_options,
    evaluate,
    get_task,
    task_names,
    write_results,
)
from alexatm_jax.evaluation.suites import SUITES, run_suite

__all__ = [
    "DataError",
    "EvalResult",
    "SUITES",
    "default_options",
    "evaluate",
    "get_task",
    "run_suite",
    "task_names",
    "write_results",
]
