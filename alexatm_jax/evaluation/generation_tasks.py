"""Generation tasks (greedy decoding, the release's 1-shot recipes): XSum / MLSum summarisation,
SQuAD v2 extractive QA, E2E NLG data-to-text (translation: `translation_tasks`).

Each task turns its data into prompts, cuts the model's output back to the answer, and scores it.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

from alexatm_jax.evaluation import data, metrics, sources
from alexatm_jax.evaluation.data import DataError
from alexatm_jax.evaluation.text_processing import (
    cut_before,
    last_word,
    truncate_document,
    word_count,
)
from alexatm_jax.tokenization import Tokenizer, clm_prompt


@dataclasses.dataclass(frozen=True)
class GenerationItem:
    """One prompt and its reference(s)."""

    prompt: str
    references: tuple[str, ...]


class GenerationTask(abc.ABC):
    """A task scored on greedy generations."""

    name: str
    split: str
    default_shots: int
    max_shots: int | None = None

    @abc.abstractmethod
    def items(
        self, data_dir: str, split: str, tokenizer: Tokenizer, shots: int, limit: int | None
    ) -> list[GenerationItem]:
        """Prompts (with their shots) and references of `split`."""

    @abc.abstractmethod
    def clean(self, output: str) -> str:
        """The answer part of a decoded generation."""

    @abc.abstractmethod
    def metrics(self, predictions: Sequence[str], items: Sequence[GenerationItem]) -> dict:
        """Scores of the cleaned predictions."""


class Summarization(GenerationTask):
    """XSum (English) and MLSum (de/es/fr) with the release's XSum 1-shot recipe.

    Data: `<dir>/{train,test}.jsonl` with `document` (or MLSum's `text`) and `summary`.
    Shots: the first training examples whose document has under 192 words, each formatted
    `Article: {document} ==> Short summary: {summary} <br><br><br> `. Test documents are cut to
    550 tokens and back to the last full sentence. Output: cut at `<br><br><br>`.
    """

    SHOT = "Article: {document} ==> Short summary: {summary} <br><br><br> "
    QUERY = "Article: {document} ==> Short summary:"
    SEPARATOR = "<br><br><br>"
    SHOT_WORD_LIMIT = 192
    DOCUMENT_TOKEN_LIMIT = 550
    split = "test"
    default_shots = 1

    def __init__(self, name: str, english: bool):
        self.name = name
        self.english = english

    @staticmethod
    def document(example: data.Example) -> str:
        """The example's `document` (or MLSum's `text`) field."""
        key = "document" if "document" in example else "text"
        if key not in example:
            raise DataError(
                f"{example.get(data.WHERE, '?')}: an example has neither `document` nor `text`"
            )
        return data.field(example, key)

    def shots(self, data_dir: str, count: int) -> list[data.Example]:
        """The first `count` training examples with documents under SHOT_WORD_LIMIT words."""
        source = sources.source(self.name)
        for limit in (1000, None):
            train = data.load_split(data_dir, source, "train", ("summary",), limit)
            chosen = [e for e in train if word_count(self.document(e)) < self.SHOT_WORD_LIMIT][
                :count
            ]
            if len(chosen) == count or limit is None or len(train) < limit:
                break
        if len(chosen) < count:
            raise DataError(
                f"the {self.name} train split has only {len(chosen)} documents under "
                f"{self.SHOT_WORD_LIMIT} words; {count} shots were asked for"
            )
        return chosen

    def items(self, data_dir, split, tokenizer, shots, limit):
        prefix = "".join(
            self.SHOT.format(document=self.document(e), summary=data.field(e, "summary"))
            for e in (self.shots(data_dir, shots) if shots else [])
        )
        examples = data.load_split(data_dir, sources.source(self.name), split, ("summary",), limit)
        return [
            GenerationItem(
                clm_prompt(
                    prefix
                    + self.QUERY.format(
                        document=truncate_document(
                            self.document(e), tokenizer, self.DOCUMENT_TOKEN_LIMIT
                        )
                    )
                ),
                (data.field(e, "summary"),),
            )
            for e in examples
        ]

    def clean(self, output):
        return cut_before(output, self.SEPARATOR)

    def metrics(self, predictions, items):
        return metrics.rouge(predictions, [i.references[0] for i in items], self.english)


class SquadV2(GenerationTask):
    """SQuAD v2, zero-shot with the release notebook's dummy shot.

    Data: `squad_v2/dev.jsonl` with `context`, `question`, `answers` (a list of strings, empty
    for unanswerable, or HuggingFace's `{"text": [...], "answer_start": [...]}`). Prompt:
    `[CLM] Context: {context} Question: What is the last word in the passage? Answer:
    {last word}; Question: {question} Answer:`. Output: cut at the first `;` (the shot's answer
    terminator). Metrics: official SQuAD v2 exact / F1, overall and HasAns / NoAns.
    """

    PROMPT = (
        "Context: {context} Question: What is the last word in the passage? "
        "Answer: {last_word}; Question: {question} Answer:"
    )
    name = "squad_v2"
    split = "dev"
    default_shots = 0
    max_shots = 0

    def items(self, data_dir, split, tokenizer, shots, limit):
        examples = data.load_split(
            data_dir, sources.source(self.name), split, ("context", "question", "answers"), limit
        )
        return [
            GenerationItem(
                clm_prompt(
                    self.PROMPT.format(
                        context=data.field(e, "context"),
                        last_word=last_word(e["context"]),
                        question=data.field(e, "question"),
                    )
                ),
                tuple(self.answers(e)),
            )
            for e in examples
        ]

    @staticmethod
    def answers(example: data.Example) -> list[str]:
        """The gold answer strings: a list of strings, or the texts of HuggingFace's dict."""
        value = example["answers"]
        if isinstance(value, dict) and isinstance(value.get("text"), list):
            value = value["text"]
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise DataError(
                f"{example.get(data.WHERE, '?')}: field `answers` must be a list of "
                'strings ([] when unanswerable) or {"text": [...], '
                f'"answer_start": [...]}}, got {value!r}'
            )
        return value

    def clean(self, output):
        return cut_before(output, ";")

    def metrics(self, predictions, items):
        return metrics.squad_scores(predictions, [i.references for i in items])


class E2ENLG(GenerationTask):
    """E2E NLG (restaurant meaning representations -> text), the release notebook's 1-shot prompt.

    Data: `e2e_nlg/{train,test}.jsonl` (or HuggingFace e2e_nlg) with `meaning_representation` and
    `human_reference`; the test rows of one meaning representation are its references. Shot: the
    first training row, `{mr} ==> sentence describing the place: {ref} ; `; prompt `[CLM] ` +
    shots + `{mr} ==> sentence describing the place:`. Output: cut at the first `;`. Metrics:
    multi-reference BLEU (sacrebleu 13a), chrF, ROUGE-L (best over the references).
    """

    SHOT = "{mr} ==> sentence describing the place: {ref} ; "
    QUERY = "{mr} ==> sentence describing the place:"
    FIELDS = ("meaning_representation", "human_reference")
    name = "e2e_nlg"
    split = "test"
    default_shots = 1

    def items(self, data_dir, split, tokenizer, shots, limit):
        source = sources.source(self.name)
        prefix = ""
        if shots:
            train = data.load_split(data_dir, source, "train", self.FIELDS, shots)
            if len(train) < shots:
                raise DataError(
                    f"the e2e_nlg train split has {len(train)} rows; {shots} shots were asked for"
                )
            prefix = "".join(
                self.SHOT.format(
                    mr=data.field(e, self.FIELDS[0]), ref=data.field(e, self.FIELDS[1])
                )
                for e in train
            )
        references: dict[str, list[str]] = {}
        for e in data.load_split(data_dir, source, split, self.FIELDS):
            references.setdefault(data.field(e, self.FIELDS[0]), []).append(
                data.field(e, self.FIELDS[1])
            )
        grouped = list(references.items())[:limit]
        return [
            GenerationItem(clm_prompt(prefix + self.QUERY.format(mr=mr)), tuple(refs))
            for mr, refs in grouped
        ]

    def clean(self, output):
        return cut_before(output, ";")

    def metrics(self, predictions, items):
        references = [i.references for i in items]
        return {
            **metrics.translation_scores(predictions, references, "13a", plain_name=True),
            "rougeL": metrics.rouge_l_multi(predictions, references),
        }
