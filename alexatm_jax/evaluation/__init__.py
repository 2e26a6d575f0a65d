"""Few-shot / zero-shot evaluation (PAPER.md §5): tasks, prompts, metrics and the harness."""

from alexatm_jax.evaluation.harness import (
    EvalResult,
    default_options,
    evaluate,
    get_task,
    task_names,
    write_results,
)

__all__ = ["EvalResult", "default_options", "evaluate", "get_task", "task_names", "write_results"]
