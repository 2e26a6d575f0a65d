"""Evaluation metrics. All scores are percentages (0-100) unless named otherwise.

ROUGE comes from `rouge-score`, BLEU and chrF from `sacrebleu` (corpus level); the SQuAD
EM/F1 follow the official SQuAD v2 evaluation script's normalisation.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import string
from typing import Sequence

# English: rouge-score's default tokenizer (lower-cased [a-z0-9] words) with the Porter stemmer.
# Other languages: lower-cased Unicode words, no stemmer (the default tokenizer would drop every
# accented letter, and Porter is English-only).
_UNICODE_WORD = re.compile(r"\w+", re.UNICODE)


class _UnicodeWordTokenizer:
    """rouge-score tokenizer interface: lower-cased \\w+ runs."""

    def tokenize(self, text: str) -> list[str]:
        return _UNICODE_WORD.findall(text.lower())


def rouge(predictions: Sequence[str], references: Sequence[str],
          english: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (x100) over prediction/reference pairs."""
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL"]
    scorer = (rouge_scorer.RougeScorer(types, use_stemmer=True) if english
              else rouge_scorer.RougeScorer(types, tokenizer=_UnicodeWordTokenizer()))
    totals = collections.Counter()
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    count = max(len(predictions), 1)
    return {name: 100.0 * totals[name] / count for name in types}


def flores_spm_model_path() -> str:
    """Where sacrebleu looks for the Flores-101 SentencePiece model ($SACREBLEU/models/...)."""
    from sacrebleu.utils import SACREBLEU_DIR

    return os.path.join(SACREBLEU_DIR, "models", "sacrebleu_tokenizer_spm.model")


def bleu_tokenizer() -> str:
    """'flores101' (spBLEU) when its SentencePiece model is on disk, else '13a' (with a warning).

    sacrebleu would download the Flores model on first use; this harness never downloads.
    """
    if os.path.isfile(flores_spm_model_path()):
        return "flores101"
    logging.warning(
        "the Flores-101 SentencePiece model is not at %s, so spBLEU cannot be computed offline; "
        "reporting BLEU with sacrebleu's 13a tokenizer instead (download "
        "https://dl.fbaipublicfiles.com/fairseq/models/flores/sacrebleu_tokenizer_spm.model "
        "to that path for spBLEU)", flores_spm_model_path())
    return "13a"


def translation_scores(predictions: Sequence[str], references: Sequence[str],
                       tokenize: str) -> dict[str, float | str]:
    """Corpus BLEU (named `spbleu` with the flores101 tokenizer, else `bleu_<tokenizer>`), chrF."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize=tokenize)
    bleu_score = bleu.corpus_score(list(predictions), [list(references)])
    chrf = CHRF()
    chrf_score = chrf.corpus_score(list(predictions), [list(references)])
    name = "spbleu" if tokenize == "flores101" else f"bleu_{tokenize}"
    return {name: bleu_score.score, "chrf": chrf_score.score,
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token-overlap F1 in [0, 1]; when either side is empty, 1.0 iff both are."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str],
                 gold_answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v2 `exact` and `f1` (x100): max over gold answers; no answer = gold [""]."""
    em = f1 = 0.0
    for prediction, golds in zip(predictions, gold_answers):
        golds = [g for g in golds if normalize_answer(g)] or [""]
        em += max(exact_match(prediction, g) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    count = max(len(predictions), 1)
    return {"exact": 100.0 * em / count, "f1": 100.0 * f1 / count}


def accuracy(predicted: Sequence[int], labels: Sequence[int]) -> float:
    """Percentage of equal entries."""
    return 100.0 * sum(p == y for p, y in zip(predicted, labels)) / max(len(labels), 1)


def f1_for_class(predicted: Sequence[int], labels: Sequence[int], positive: int) -> float:
    """Binary F1 (x100) of class `positive`."""
    tp = sum(p == positive and y == positive for p, y in zip(predicted, labels))
    fp = sum(p == positive and y != positive for p, y in zip(predicted, labels))
    fn = sum(p != positive and y == positive for p, y in zip(predicted, labels))
    return 0.0 if tp == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)


def macro_f1(predicted: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Unweighted mean over classes of the per-class F1 (x100)."""
    return sum(f1_for_class(predicted, labels, c) for c in range(num_classes)) / num_classes
