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
from collections.abc import Sequence

# English: rouge-score's default tokenizer (lower-cased [a-z0-9] words) with the Porter stemmer.
# Other languages: lower-cased Unicode words, no stemmer (the default tokenizer would drop every
# accented letter, and Porter is English-only).
_UNICODE_WORD = re.compile(r"\w+", re.UNICODE)


class _UnicodeWordTokenizer:
    """rouge-score tokenizer interface: lower-cased \\w+ runs."""

    def tokenize(self, text: str) -> list[str]:
        return _UNICODE_WORD.findall(text.lower())


def rouge(
    predictions: Sequence[str], references: Sequence[str], english: bool = True
) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (x100) over prediction/reference pairs."""
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL"]
    scorer = (
        rouge_scorer.RougeScorer(types, use_stemmer=True)
        if english
        else rouge_scorer.RougeScorer(types, tokenizer=_UnicodeWordTokenizer())
    )
    totals = collections.Counter()
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    count = max(len(predictions), 1)
    return {name: 100.0 * totals[name] / count for name in types}


SPBLEU_MODEL_ENV = "ALEXATM_SPBLEU_MODEL"
FLORES_SPM_FILE = "sacrebleu_tokenizer_spm.model"
FLORES_SPM_URL = "https://dl.fbaipublicfiles.com/fairseq/models/flores/" + FLORES_SPM_FILE


_WARNED: set[str] = set()  # model paths already warned about


def flores_spm_model_path() -> str:
    """The Flores-101 SentencePiece model spBLEU needs: $ALEXATM_SPBLEU_MODEL (set by
    `alexatm-eval --spbleu_model`) when set, else where sacrebleu keeps it ($SACREBLEU/models/)."""
    if os.environ.get(SPBLEU_MODEL_ENV):
        return os.environ[SPBLEU_MODEL_ENV]
    from sacrebleu.utils import SACREBLEU_DIR

    return os.path.join(SACREBLEU_DIR, "models", FLORES_SPM_FILE)


def bleu_tokenizer() -> str:
    """'flores101' (spBLEU) when its SentencePiece model is on disk, else '13a' (with a warning).

    sacrebleu would download the Flores model on first use; this harness never downloads.
    """
    path = flores_spm_model_path()
    if os.path.isfile(path):
        return "flores101"
    if os.environ.get(SPBLEU_MODEL_ENV):
        raise FileNotFoundError(f"${SPBLEU_MODEL_ENV} / --spbleu_model {path} does not exist")
    if path in _WARNED:
        return "13a"
    _WARNED.add(path)
    logging.warning(
        "the Flores-101 SentencePiece model is not at %s, so spBLEU cannot be computed offline; "
        "reporting BLEU with sacrebleu's 13a tokenizer instead, named bleu_13a (pass "
        "--spbleu_model or set $%s to a copy of %s for spBLEU)",
        path,
        SPBLEU_MODEL_ENV,
        FLORES_SPM_URL,
    )
    return "13a"


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-example reference lists -> sacrebleu's reference streams (None where one is short)."""
    width = max((len(r) for r in references), default=1)
    return [[r[k] if k < len(r) else None for r in references] for k in range(width)]


def translation_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenize: str,
    plain_name: bool = False,
) -> dict[str, float | str]:
    """Corpus BLEU and chrF over one or more references per example.

    The BLEU is named `spbleu` with the flores101 tokenizer (SentencePiece from
    `flores_spm_model_path`), `bleu_<tokenizer>` otherwise (`bleu` when `plain_name`: WMT's
    standard 13a BLEU);
    `bleu_tokenize` and the sacrebleu signatures say which tokenization produced it.
    """
    from sacrebleu.metrics import BLEU, CHRF

    hypotheses, streams = list(predictions), _reference_streams(references)
    if tokenize == "flores101":
        import sentencepiece as spm

        model = spm.SentencePieceProcessor(model_file=flores_spm_model_path())
        split = lambda text: " ".join(model.encode(text, out_type=str))
        bleu = BLEU(tokenize="none")
        score = bleu.corpus_score(
            [split(h) for h in hypotheses],
            [[None if r is None else split(r) for r in s] for s in streams],
        )
        signature = str(bleu.get_signature()).replace("tok:none", "tok:flores101")
        name = "spbleu"
    else:
        bleu = BLEU(tokenize=tokenize)
        score = bleu.corpus_score(hypotheses, streams)
        signature = str(bleu.get_signature())
        name = "bleu" if plain_name else f"bleu_{tokenize}"
    chrf = CHRF()
    chrf_score = chrf.corpus_score(hypotheses, streams)
    return {
        name: score.score,
        "chrf": chrf_score.score,
        "bleu_tokenize": tokenize,
        "bleu_signature": signature,
        "chrf_signature": str(chrf.get_signature()),
    }


def rouge_l_multi(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the best ROUGE-L F1 (x100) against any of its references
    (rouge-score's default tokenizer, Porter stemmer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = sum(
        scorer.score_multi(list(refs), p)["rougeL"].fmeasure
        for p, refs in zip(predictions, references)
    )
    return 100.0 * total / max(len(predictions), 1)


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


def squad_scores(
    predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]
) -> dict[str, float]:
    """SQuAD v2 `exact` and `f1` (x100; max over gold answers; no answer = gold [""]), and the
    same over the answerable (`HasAns_*`) and unanswerable (`NoAns_*`) questions with their
    counts, as the official evaluation script reports them."""
    per = {"HasAns": ([], []), "NoAns": ([], [])}
    for prediction, golds in zip(predictions, gold_answers):
        golds = [g for g in golds if normalize_answer(g)]
        ems, f1s = per["HasAns" if golds else "NoAns"]
        golds = golds or [""]
        ems.append(max(exact_match(prediction, g) for g in golds))
        f1s.append(max(token_f1(prediction, g) for g in golds))
    count = max(len(predictions), 1)
    out = {
        "exact": 100.0 * sum(sum(v[0]) for v in per.values()) / count,
        "f1": 100.0 * sum(sum(v[1]) for v in per.values()) / count,
    }
    for name, (ems, f1s) in per.items():
        if ems:
            out[f"{name}_exact"] = 100.0 * sum(ems) / len(ems)
            out[f"{name}_f1"] = 100.0 * sum(f1s) / len(f1s)
        out[f"{name}_total"] = len(ems)
    return out


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
