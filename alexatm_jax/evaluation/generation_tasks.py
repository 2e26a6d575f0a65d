"""Generation tasks (greedy decoding, PAPER.md §5): XSum / MLSum summarisation, Flores-101
translation, SQuAD v2 extractive QA.

Each task turns its data into prompts, cuts the model's output back to the answer, and scores it.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from typing import Sequence

from alexatm_jax.evaluation import data, metrics
from alexatm_jax.evaluation.text_processing import (
    cut_before,
    last_word,
    truncate_document,
    word_count,
)
from alexatm_jax.tokenization import Tokenizer, clm_prompt

# ISO 639-1 code -> (name used in the prompt, Flores-101 file code) for the 12 languages.
FLORES_LANGUAGES: dict[str, tuple[str, str]] = {
    "ar": ("Arabic", "ara"), "en": ("English", "eng"), "fr": ("French", "fra"),
    "de": ("German", "deu"), "hi": ("Hindi", "hin"), "it": ("Italian", "ita"),
    "ja": ("Japanese", "jpn"), "mr": ("Marathi", "mar"), "pt": ("Portuguese", "por"),
    "es": ("Spanish", "spa"), "ta": ("Tamil", "tam"), "te": ("Telugu", "tel"),
}


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
    def items(self, data_dir: str, split: str, tokenizer: Tokenizer, shots: int,
              limit: int | None) -> list[GenerationItem]:
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
    def document(example: data.Example, where: str) -> str:
        """The example's `document` (or `text`) field."""
        for key in ("document", "text"):
            if key in example:
                return example[key]
        raise ValueError(f"{where}: an example has neither `document` nor `text`")

    def shots(self, data_dir: str, count: int) -> list[data.Example]:
        """The first `count` training examples with documents under SHOT_WORD_LIMIT words."""
        path = data.split_path(data_dir, self.name, "train")
        short = (e for e in data.iter_jsonl(path, ("summary",))
                 if word_count(self.document(e, str(path))) < self.SHOT_WORD_LIMIT)
        chosen = list(itertools.islice(short, count))
        if len(chosen) < count:
            raise ValueError(f"{path} has only {len(chosen)} documents under "
                             f"{self.SHOT_WORD_LIMIT} words; {count} shots were asked for")
        return chosen

    def items(self, data_dir, split, tokenizer, shots, limit):
        prefix = "".join(self.SHOT.format(document=self.document(e, "train"), summary=e["summary"])
                         for e in (self.shots(data_dir, shots) if shots else []))
        examples = data.task_split(data_dir, self.name, split, ("summary",), limit)
        return [GenerationItem(
            clm_prompt(prefix + self.QUERY.format(document=truncate_document(
                self.document(e, split), tokenizer, self.DOCUMENT_TOKEN_LIMIT))),
            (e["summary"],)) for e in examples]

    def clean(self, output):
        return cut_before(output, self.SEPARATOR)

    def metrics(self, predictions, items):
        return metrics.rouge(predictions, [i.references[0] for i in items], self.english)


class Flores(GenerationTask):
    """Flores-101 translation between two of the 12 languages, the release's 1-shot recipe.

    Data: see `data.flores_sentences` (dev for shots, devtest for evaluation). Shot:
    `Sentence:  {src}; Translation in {Target}: {tgt}; ` (two spaces after `Sentence:`),
    the first dev sentences. Output: cut at the first `;`.
    """

    SHOT = "Sentence:  {source}; Translation in {target}: {translation}; "
    QUERY = "Sentence:  {source}; Translation in {target}:"
    split = "devtest"
    default_shots = 1

    def __init__(self, source: str, target: str):
        for code in (source, target):
            if code not in FLORES_LANGUAGES:
                raise ValueError(f"unknown Flores language {code!r}; use two of "
                                 f"{', '.join(FLORES_LANGUAGES)}")
        if source == target:
            raise ValueError(f"flores101:{source}-{target} translates a language into itself")
        self.source, self.target = source, target
        self.name = f"flores101:{source}-{target}"

    def sentences(self, data_dir: str, split: str, language: str,
                  limit: int | None) -> list[str]:
        """One language's sentences of `split`."""
        return data.flores_sentences(data_dir, split, language, FLORES_LANGUAGES[language][1],
                                     limit)

    def items(self, data_dir, split, tokenizer, shots, limit):
        target_name = FLORES_LANGUAGES[self.target][0]
        prefix = ""
        if shots:
            pairs = zip(self.sentences(data_dir, "dev", self.source, shots),
                        self.sentences(data_dir, "dev", self.target, shots))
            prefix = "".join(self.SHOT.format(source=s, target=target_name, translation=t)
                             for s, t in pairs)
        sources = self.sentences(data_dir, split, self.source, limit)
        targets = self.sentences(data_dir, split, self.target, limit)
        if len(sources) != len(targets):
            raise ValueError(f"Flores {split} files of {self.source} and {self.target} have "
                             f"{len(sources)} and {len(targets)} sentences; they must align")
        return [GenerationItem(clm_prompt(prefix + self.QUERY.format(source=s, target=target_name)),
                               (t,)) for s, t in zip(sources, targets)]

    def clean(self, output):
        return cut_before(output, ";")

    def metrics(self, predictions, items):
        return metrics.translation_scores(predictions, [i.references[0] for i in items],
                                          metrics.bleu_tokenizer())


class SquadV2(GenerationTask):
    """SQuAD v2, zero-shot with the release notebook's dummy shot.

    Data: `squad_v2/dev.jsonl` with `context`, `question`, `answers` (list of strings, empty for
    unanswerable). Prompt: `[CLM] Context: {context} Question: What is the last word in the
    passage? Answer: {last word}; Question: {question} Answer:`. Output: cut at the first `;`
    (the shot's answer terminator). Metrics: official SQuAD v2 exact / F1.
    """

    PROMPT = ("Context: {context} Question: What is the last word in the passage? "
              "Answer: {last_word}; Question: {question} Answer:")
    name = "squad_v2"
    split = "dev"
    default_shots = 0
    max_shots = 0

    def items(self, data_dir, split, tokenizer, shots, limit):
        examples = data.task_split(data_dir, self.name, split,
                                   ("context", "question", "answers"), limit)
        return [GenerationItem(
            clm_prompt(self.PROMPT.format(context=e["context"], last_word=last_word(e["context"]),
                                          question=e["question"])),
            tuple(e["answers"])) for e in examples]

    def clean(self, output):
        return cut_before(output, ";")

    def metrics(self, predictions, items):
        return metrics.squad_scores(predictions, [i.references for i in items])


def generation_task(name: str) -> GenerationTask | None:
    """The generation task called `name`, or None if `name` is not one."""
    summaries = {"xsum": True, "mlsum_de": False, "mlsum_es": False, "mlsum_fr": False}
    if name in summaries:
        return Summarization(name, summaries[name])
    if name == "squad_v2":
        return SquadV2()
    if name.startswith("flores101:"):
        pair = name.split(":", 1)[1]
        if pair.count("-") != 1:
            raise ValueError(f"write Flores tasks as flores101:<src>-<tgt>, e.g. flores101:en-de; "
                             f"got {name!r}")
        return Flores(*pair.split("-"))
    return None

