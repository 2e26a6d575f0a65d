"""Zero-shot classification / multiple-choice tasks scored by teacher-forced cross-entropy.

Every example becomes one text per choice ("one input per choice",
docs/paper_facts.md#evaluation-protocol). A `Choice` holds the text split into a `context` and
the `continuation` that carries the choice, and the `full_text` (their concatenation). The
harness scores each choice in one of two modes:

* `denoise` (default): encoder input = full_text (no `[CLM]`), decoder target = full_text; the
  model rewrites its input and the most plausible text wins.
* `clm`: encoder input = `[CLM] ` + context, decoder target = continuation.

The winning choice has the highest mean per-token log-probability (lowest cross-entropy).
The templates are ours (the paper does not publish them); see each builder below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from alexatm_jax.evaluation import data, metrics, sources
from alexatm_jax.evaluation.data import DataError

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Choice:
    """One candidate text: context + continuation == full_text (up to the joining space)."""

    context: str
    continuation: str
    full_text: str


def spaced(context: str, continuation: str) -> Choice:
    """The choice `context` + " " + `continuation`."""
    return Choice(context, continuation, f"{context} {continuation}")


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
    """One example: its choices, their short names (the answer words / entities / options),
    the gold choice indices, and grouping keys for metrics."""

    choices: tuple[Choice, ...]
    names: tuple[str, ...]
    gold: tuple[int, ...]
    group: str = ""
    language: str = ""
    answers: tuple[str, ...] = ()


def _answers(context: str, answers: Sequence[str], gold: int, **keys: str) -> ChoiceItem:
    """Choices `context` + " " + answer, named by the answers."""
    return ChoiceItem(tuple(spaced(context, a) for a in answers), tuple(answers), (gold,), **keys)


def _label(example: Example, num_classes: int, names: Sequence[str] = ()) -> int:
    """The label as a class index in [0, num_classes): an integer (or boolean), or one of the
    class `names`; DataError naming the place and the accepted values otherwise."""
    label = example.get("label")
    if isinstance(label, str) and label in names:
        return list(names).index(label)
    if isinstance(label, bool) or (isinstance(label, int) and 0 <= label < num_classes):
        return int(label)
    accepted = f"an integer 0..{num_classes - 1}" + (f" or one of {list(names)}" if names else "")
    raise DataError(
        f"{example.get(data.WHERE, '?')}: field `label` must be {accepted}, got {label!r}"
    )


def _text(example: Example, *names: str) -> list[str]:
    """The string fields `names` of `example` (DataError naming a field that is not a string)."""
    return [data.field(example, n) for n in names]


def _question(text: str) -> str:
    text = text.strip()
    return text if text.endswith("?") else text + "?"


def _yes_no(context: str, label: int, **keys: str) -> ChoiceItem:
    return _answers(context, ("No", "Yes"), label, **keys)


def boolq(e: Example) -> ChoiceItem:
    """`{passage} Question: {question}? Answer: No|Yes`; fields passage, question, label (1=yes)."""
    passage, question = _text(e, "passage", "question")
    return _yes_no(f"{passage} Question: {_question(question)} Answer:", _label(e, 2))


def cb(e: Example) -> ChoiceItem:
    """`{premise} Question: {hypothesis} True, False, or Neither? Answer: True|False|Neither`;
    label 0 entailment, 1 contradiction, 2 neutral."""
    context = f"{e['premise']} Question: {e['hypothesis']} True, False, or Neither? Answer:"
    return _answers(
        context,
        ("True", "False", "Neither"),
        _label(e, 3, ("entailment", "contradiction", "neutral")),
    )


def rte(e: Example) -> ChoiceItem:
    """`{premise} Question: {hypothesis} True or False? Answer: True|False`;
    label 0 entailment, 1 not_entailment."""
    context = f"{e['premise']} Question: {e['hypothesis']} True or False? Answer:"
    return _answers(context, ("True", "False"), _label(e, 2, ("entailment", "not_entailment")))


def copa(e: Example) -> ChoiceItem:
    """`{premise without final period} because|so {choice, first letter lower-cased}`;
    fields premise, choice1, choice2, question (cause/effect), label (0/1); also XCOPA."""
    premise, question, choice1, choice2 = _text(e, "premise", "question", "choice1", "choice2")
    if question not in ("cause", "effect"):
        raise DataError(
            f"{e.get(data.WHERE, '?')}: field `question` must be 'cause' or "
            f"'effect' (lower case), got {question!r}"
        )
    connective = {"cause": "because", "effect": "so"}[question]
    context = f"{premise.rstrip().rstrip('.')} {connective}"
    lower = lambda s: s[:1].lower() + s[1:]
    return _answers(
        context,
        [lower(c) for c in (choice1, choice2)],
        _label(e, 2),
        language=e.get("language", ""),
    )


def wic(e: Example) -> ChoiceItem:
    """`Sentence 1: {s1} Sentence 2: {s2} Question: Is the word '{word}' used with the same
    meaning in both sentences? Answer: No|Yes`; fields word, sentence1, sentence2, label."""
    return _yes_no(
        f"Sentence 1: {e['sentence1']} Sentence 2: {e['sentence2']} Question: Is the "
        f"word '{e['word']}' used with the same meaning in both sentences? Answer:",
        _label(e, 2),
    )


def wsc(e: Example) -> ChoiceItem:
    """`{text} Question: In the passage above, does the pronoun '{span2_text}' refer to
    '{span1_text}'? Answer: No|Yes`; label 1 = it does."""
    return _yes_no(
        f"{e['text']} Question: In the passage above, does the pronoun "
        f"'{e['span2_text']}' refer to '{e['span1_text']}'? Answer:",
        _label(e, 2),
    )


def multirc(e: Example) -> ChoiceItem:
    """One line per answer option: `{paragraph} Question: {question} Candidate answer: {answer}
    Is the candidate answer correct? Answer: No|Yes`; fields paragraph, question, answer, label,
    question_id (groups the options of one question for EM)."""
    return _yes_no(
        f"{e['paragraph']} Question: {e['question']} Candidate answer: {e['answer']} "
        "Is the candidate answer correct? Answer:",
        _label(e, 2),
        group=str(e["question_id"]),
    )


def record(e: Example) -> ChoiceItem:
    """One choice per entity: `{passage} {query with @placeholder = entity}`; fields passage
    (its `@highlight` lines become `- ` bullets, newlines spaces), query, entities, answers."""
    passage = " ".join(data.field(e, "passage").replace("@highlight\n", "- ").split())
    entities = list(dict.fromkeys(_strings(e, "entities")))
    answers = _strings(e, "answers")
    if not entities or not answers:
        raise DataError(
            f"{e.get(data.WHERE, '?')}: ReCoRD needs non-empty `entities` and `answers`"
        )
    choices = tuple(
        spaced(passage, e["query"].replace("@placeholder", entity)) for entity in entities
    )
    gold = tuple(i for i, entity in enumerate(entities) if entity in answers)
    return ChoiceItem(choices, tuple(entities), gold, answers=tuple(answers))


def _strings(e: Example, name: str) -> list[str]:
    """A list-of-strings field (DataError naming the place otherwise)."""
    value = data.field(e, name, list)
    if not all(isinstance(v, str) for v in value):
        raise DataError(
            f"{e.get(data.WHERE, '?')}: field `{name}` must be a list of strings, got {value!r}"
        )
    return value


def xnli(e: Example) -> ChoiceItem:
    """`{premise} Question: {hypothesis} True, False, or Neither? Answer: True|Neither|False`;
    label 0 entailment, 1 neutral, 2 contradiction; field language."""
    context = f"{e['premise']} Question: {e['hypothesis']} True, False, or Neither? Answer:"
    return _answers(
        context,
        ("True", "Neither", "False"),
        _label(e, 3, ("entailment", "neutral", "contradiction")),
        language=e["language"],
    )


def pawsx(e: Example) -> ChoiceItem:
    """`Sentence 1: {s1} Sentence 2: {s2} Question: Do both sentences mean the same thing?
    Answer: No|Yes`; label 1 = paraphrase; field language."""
    return _yes_no(
        f"Sentence 1: {e['sentence1']} Sentence 2: {e['sentence2']} Question: Do both "
        "sentences mean the same thing? Answer:",
        _label(e, 2),
        language=e["language"],
    )


def xwinograd(e: Example) -> ChoiceItem:
    """The sentence with its `_` replaced by each option; context = text up to and including
    the option, continuation = the rest; fields sentence, option1, option2, answer (1 or 2),
    language."""
    sentence, option1, option2 = _text(e, "sentence", "option1", "option2")
    where = e.get(data.WHERE, "?")
    if sentence.count("_") != 1:
        raise DataError(
            f"{where}: field `sentence` must contain exactly one `_` (the blank the "
            f"options fill), got {sentence!r}"
        )
    answer = e.get("answer")
    if str(answer) not in ("1", "2") or isinstance(answer, bool):
        raise DataError(f'{where}: field `answer` must be 1 or 2 (or "1"/"2"), got {answer!r}')
    before, after = sentence.split("_", 1)
    choices = tuple(
        Choice((before + o).strip(), after.strip(), before + o + after) for o in (option1, option2)
    )
    return ChoiceItem(choices, (option1, option2), (int(answer) - 1,), language=e["language"])


def accuracy_metrics(items: Sequence[ChoiceItem], predicted: Sequence[int]) -> dict[str, float]:
    """Accuracy against the (single) gold choice."""
    return {"accuracy": metrics.accuracy(predicted, [i.gold[0] for i in items])}


def cb_metrics(items: Sequence[ChoiceItem], predicted: Sequence[int]) -> dict[str, float]:
    """Accuracy and 3-class macro-F1 (the SuperGLUE CB metrics)."""
    labels = [i.gold[0] for i in items]
    return {
        "accuracy": metrics.accuracy(predicted, labels),
        "macro_f1": metrics.macro_f1(predicted, labels, 3),
    }


def multirc_metrics(items: Sequence[ChoiceItem], predicted: Sequence[int]) -> dict[str, float]:
    """F1a (F1 of "correct" over all answer options) and EM (questions with every option right)."""
    labels = [i.gold[0] for i in items]
    all_right: dict[str, bool] = {}
    for item, p in zip(items, predicted):
        all_right[item.group] = all_right.get(item.group, True) and p == item.gold[0]
    return {
        "f1a": metrics.f1_for_class(predicted, labels, 1),
        "exact_match": 100.0 * sum(all_right.values()) / max(len(all_right), 1),
    }


def record_metrics(items: Sequence[ChoiceItem], predicted: Sequence[int]) -> dict[str, float]:
    """SQuAD-normalised EM and token F1 of the chosen entity, max over the gold answers; also
    how many examples had no answer among their entities (kept: they score by overlap only)."""
    em = f1 = 0.0
    for item, p in zip(items, predicted):
        entity = item.names[p]
        em += max(metrics.exact_match(entity, a) for a in item.answers)
        f1 += max(metrics.token_f1(entity, a) for a in item.answers)
    count = max(len(items), 1)
    return {
        "exact_match": 100.0 * em / count,
        "f1": 100.0 * f1 / count,
        "answers_not_among_entities": sum(not i.gold for i in items),
    }


def per_language_metrics(items: Sequence[ChoiceItem], predicted: Sequence[int]) -> dict[str, float]:
    """Accuracy overall, per `language` and (several languages) the mean over languages."""
    out = accuracy_metrics(items, predicted)
    per = {}
    for language in sorted({i.language for i in items}):
        chosen = [(i, p) for i, p in zip(items, predicted) if i.language == language]
        per[language] = metrics.accuracy([p for _, p in chosen], [i.gold[0] for i, _ in chosen])
        out[f"accuracy_{language}"] = per[language]
    if len(per) > 1:
        out["accuracy_language_mean"] = sum(per.values()) / len(per)
    return out


@dataclasses.dataclass(frozen=True)
class ChoiceTask:
    """A zero-shot choice task: data fields, template builder and metrics."""

    name: str
    split: str
    fields: tuple[str, ...]
    build: Callable[[Example], ChoiceItem]
    metrics: Callable[[Sequence[ChoiceItem], Sequence[int]], dict[str, float]]
    max_shots: int = 0

    def items(self, data_dir: str, split: str, limit: int | None) -> list[ChoiceItem]:
        """The `split` examples as ChoiceItems (`limit`: the first N, of each language for the
        multilingual tasks)."""
        if self.name in sources.LANGUAGE_CONFIGS:
            examples = sources.load_multilingual(data_dir, self.name, split, self.fields, limit)
        else:
            examples = data.load_split(
                data_dir, sources.source(self.name), split, self.fields, limit
            )
        return [self.build(e) for e in examples]


CHOICE_TASKS: dict[str, ChoiceTask] = {
    t.name: t
    for t in (
        ChoiceTask("boolq", "dev", ("passage", "question", "label"), boolq, accuracy_metrics),
        ChoiceTask("cb", "dev", ("premise", "hypothesis", "label"), cb, cb_metrics),
        ChoiceTask(
            "copa",
            "dev",
            ("premise", "choice1", "choice2", "question", "label"),
            copa,
            accuracy_metrics,
        ),
        ChoiceTask("rte", "dev", ("premise", "hypothesis", "label"), rte, accuracy_metrics),
        ChoiceTask(
            "wic", "dev", ("word", "sentence1", "sentence2", "label"), wic, accuracy_metrics
        ),
        ChoiceTask(
            "wsc", "dev", ("text", "span1_text", "span2_text", "label"), wsc, accuracy_metrics
        ),
        ChoiceTask(
            "multirc",
            "dev",
            ("paragraph", "question", "answer", "label", "question_id"),
            multirc,
            multirc_metrics,
        ),
        ChoiceTask(
            "record", "dev", ("passage", "query", "entities", "answers"), record, record_metrics
        ),
        ChoiceTask("xnli", "test", ("premise", "hypothesis", "label"), xnli, per_language_metrics),
        ChoiceTask(
            "xcopa",
            "test",
            ("premise", "choice1", "choice2", "question", "label"),
            copa,
            per_language_metrics,
        ),
        ChoiceTask(
            "pawsx", "test", ("sentence1", "sentence2", "label"), pawsx, per_language_metrics
        ),
        ChoiceTask(
            "xwinograd",
            "test",
            ("sentence", "option1", "option2", "answer"),
            xwinograd,
            per_language_metrics,
        ),
    )
}
