"""A fine-tuning task's metric over predicted and reference texts, by name.

    bleu / chrf   corpus BLEU (sacrebleu 13a) and chrF, both reported (translation)
    rouge         mean ROUGE-1/2/L F-measures (summarization)
    exact_match   SQuAD-normalised exact match and token F1 (question answering)
    accuracy      share of predictions equal to their reference after stripping (classification)

Every score is in [0, 100], higher is better; `MAIN_KEY[metric]` names the one `train.keep_best`
compares. The functions are the evaluation package's (alexatm_jax/evaluation/metrics.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from alexatm_jax.evaluation import metrics

MAIN_KEY = {
    "bleu": "bleu",
    "chrf": "chrf",
    "rouge": "rougeL",
    "exact_match": "exact_match",
    "accuracy": "accuracy",
}


def score(metric: str, targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Scores of `predictions` against `targets` (one reference each) for `metric`, x100.

    The argument order is SeqIO's metric-function convention (targets, predictions)."""
    targets, predictions = list(targets), list(predictions)
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if metric in ("bleu", "chrf"):
        scores = metrics.translation_scores(predictions, [[t] for t in targets], "13a", True)
        return {"bleu": float(scores["bleu"]), "chrf": float(scores["chrf"])}
    if metric == "rouge":
        return metrics.rouge(predictions, targets)
    count = max(len(targets), 1)
    if metric == "exact_match":
        return {
            "exact_match": 100.0 * sum(map(metrics.exact_match, predictions, targets)) / count,
            "f1": 100.0 * sum(map(metrics.token_f1, predictions, targets)) / count,
        }
    if metric == "accuracy":
        hits = sum(p.strip() == t.strip() for p, t in zip(predictions, targets))
        return {"accuracy": 100.0 * hits / count}
    raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(MAIN_KEY)}")
