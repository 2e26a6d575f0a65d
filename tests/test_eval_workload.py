"""The evaluation planner's workload and suite time: batches planned as the inference engine
makes them and priced by a fake with linear costs (hand-computed), the paper defaults covering
the paper suite, workloads measured from a tiny data directory, and the recommendation."""

from __future__ import annotations

import json
import pathlib

import pytest
from inference_helpers import train_tiny_sentencepiece

from alexatm_jax.eval_planning import suite_time
from alexatm_jax.eval_planning.suite_time import BatchShape, estimate_suite, estimate_task
from alexatm_jax.eval_planning.workload import (
    GENERATE,
    MEASURED,
    PAPER_DEFAULTS,
    SCORE,
    TaskWorkload,
    measured_workload,
    paper_table,
    paper_workload,
    suite_workloads,
)
from alexatm_jax.evaluation import get_task
from alexatm_jax.evaluation.choice_tasks import ChoiceTask
from alexatm_jax.evaluation.sources import LANGUAGE_CONFIGS
from alexatm_jax.evaluation.suites import suite_tasks
from alexatm_jax.tokenization import Tokenizer


class LinearTimes:
    """Seconds linear in the shape; `scale` makes one layout faster than another."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def prefill(self, batch: int, input_len: int) -> float:
        return self.scale * batch * input_len

    def decode_step(self, batch: int, input_len: int, cache_len: int) -> float:
        return self.scale * (batch + input_len + cache_len) / 10

    def scoring(self, batch: int, input_len: int, target_len: int) -> float:
        return self.scale * batch * (input_len + 2 * target_len)


def workload(kind: str, inputs, outputs, max_new_tokens: int = 6) -> TaskWorkload:
    return TaskWorkload("t", kind, len(inputs), tuple(inputs), tuple(outputs), max_new_tokens, "x")


def test_generation_batches_sort_bucket_pad_and_stop_at_the_longest_row():
    # Prompts sorted by length: 10 (row 1), 12 (4), 20 (2), 40 (0), 100 cut to 64 (3).
    # Batches of 2: [1, 4] bucket 16, generates max(7 -> 6, 1) = 6 tokens; [2, 0] bucket 64,
    # max(2, 3) = 3 tokens; [3] padded to 2 rows, bucket 64, 5 tokens.
    work = workload(GENERATE, [40, 10, 20, 100, 12], [3, 7, 2, 5, 1])
    shapes = suite_time.plan_batches(work, batch_size=2, max_positions=64)
    assert shapes == {
        BatchShape(16, steps=6): 1,
        BatchShape(64, steps=3): 1,
        BatchShape(64, steps=5): 1,
    }
    estimate = estimate_task(work, LinearTimes(), batch_size=2, max_positions=64)
    # prefill 2 x bucket, then (tokens - 1) decode steps of (2 + bucket + 6) / 10.
    expected = (32 + 5 * 2.4) + (128 + 2 * 7.2) + (128 + 4 * 7.2)
    assert estimate.seconds == pytest.approx(expected)
    assert estimate.seconds_at_max_new_tokens == pytest.approx(32 + 5 * 2.4 + 2 * (128 + 5 * 7.2))
    assert (estimate.batches, estimate.rows, estimate.truncated_rows) == (3, 5, 1)
    assert estimate.buckets == {"16": 1, "64": 2}


def test_one_token_generation_is_a_prefill_alone():
    estimate = estimate_task(workload(GENERATE, [16], [1]), LinearTimes(), batch_size=4)
    assert estimate.seconds == pytest.approx(4 * 16)


def test_scoring_sorts_by_input_plus_target_and_buckets_them_apart():
    # Keys 33, 65, 18, 42 -> order 2, 0, 3, 1. Batches [2, 0]: inputs 30 -> 32, targets 3 -> 16;
    # [3, 1]: inputs 40 -> 64, targets 60 -> 64. (Sorting by input alone would pair 1 with 2.)
    work = workload(SCORE, [30, 5, 17, 40], [3, 60, 1, 2])
    shapes = suite_time.plan_batches(work, batch_size=2)
    assert shapes == {BatchShape(32, target_len=16): 1, BatchShape(64, target_len=64): 1}
    estimate = estimate_task(work, LinearTimes(), batch_size=2)
    assert estimate.seconds == pytest.approx(2 * (32 + 32) + 2 * (64 + 128))
    assert estimate.seconds_at_max_new_tokens == estimate.seconds
    assert estimate.buckets == {"32x16": 1, "64x64": 1}


EXPECTED_CHOICES = {
    "boolq": 2,
    "cb": 3,
    "copa": 2,
    "multirc": 2,
    "rte": 2,
    "wic": 2,
    "wsc": 2,
    "xnli": 3,
    "xcopa": 2,
    "pawsx": 2,
    "xwinograd": 2,
}


def test_paper_defaults_cover_the_paper_suite():
    workloads = suite_workloads(suite_tasks("paper"), note=lambda _: None)
    assert [w.task for w in workloads] == list(suite_tasks("paper"))
    for w in workloads:
        assert w.source == PAPER_DEFAULTS
        assert w.examples > 0 and w.rows >= w.examples
        assert w.kind == (SCORE if isinstance(get_task(w.task), ChoiceTask) else GENERATE)
        assert w.kind == SCORE or all(0 < n <= w.max_new_tokens for n in w.output_tokens)
        if w.task in EXPECTED_CHOICES:
            assert w.choices_per_example == EXPECTED_CHOICES[w.task], w.task
    table = paper_table()
    for task, languages in LANGUAGE_CONFIGS.items():
        assert sorted(table["tasks"][task]["examples_per_language"]) == sorted(languages)
    by_name = {w.task: w for w in workloads}
    assert by_name["xsum"].examples == 11334
    assert by_name["flores101:ta-en"].examples == 1012
    assert by_name["xnli"].examples == 15 * 5010
    assert by_name["multirc"].rows == 2 * 4848
    assert paper_workload("xnli", limit=10).examples == 150


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tiny_sentencepiece(str(tmp_path_factory.mktemp("spm"))))


LONG_ANSWER = "a very long answer that goes on and on for many words"


def write_jsonl(path: pathlib.Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("eval_data")
    write_jsonl(
        root / "cb" / "dev.jsonl",
        [
            {"premise": "P.", "hypothesis": "H.", "label": "neutral"},
            {"premise": "Q.", "hypothesis": "G.", "label": 0},
        ],
    )
    write_jsonl(
        root / "multirc" / "dev.jsonl",
        [
            {"paragraph": "Para.", "question": "Q1?", "answer": "A", "label": 1, "question_id": 1},
            {"paragraph": "Para.", "question": "Q1?", "answer": "B", "label": 0, "question_id": 1},
            {"paragraph": "Para.", "question": "Q2?", "answer": "C", "label": 1, "question_id": 2},
        ],
    )
    write_jsonl(
        root / "record" / "dev.jsonl",
        [
            {
                "passage": "Obama met Merkel and Putin.\n@highlight\nThey talked",
                "query": "@placeholder spoke",
                "entities": ["Obama", "Merkel", "Obama", "Putin"],
                "answers": ["Merkel"],
            }
        ],
    )
    write_jsonl(
        root / "squad_v2" / "dev.jsonl",
        [
            {"context": "Paris is in France.", "question": "Where?", "answers": ["France"]},
            {"context": "Nothing here!", "question": "Who?", "answers": []},
            {"context": "A long one.", "question": "What?", "answers": [LONG_ANSWER]},
        ],
    )
    return root


def test_measured_workloads_count_examples_choices_and_tokens(tokenizer, data_dir):
    cb = measured_workload("cb", str(data_dir), tokenizer)
    assert (cb.kind, cb.examples, cb.rows, cb.source) == (SCORE, 2, 6, MEASURED)
    text = "P. Question: H. True, False, or Neither? Answer: True"
    assert cb.input_tokens[0] == cb.output_tokens[0] == len(tokenizer.encode(text))
    multirc = measured_workload("multirc", str(data_dir), tokenizer)
    assert (multirc.examples, multirc.rows) == (3, 6)  # one item per answer option, No/Yes
    record = measured_workload("record", str(data_dir), tokenizer)
    assert (record.examples, record.rows) == (1, 3)  # distinct entities
    clm = measured_workload("cb", str(data_dir), tokenizer, choice_mode="clm")
    assert clm.input_tokens[0] == len(
        tokenizer.encode("[CLM] P. Question: H. True, False, or Neither? Answer:")
    )
    assert clm.output_tokens[0] == len(tokenizer.encode("True"))
    squad = measured_workload("squad_v2", str(data_dir), tokenizer, max_new_tokens=8)
    assert (squad.kind, squad.examples, squad.rows) == (GENERATE, 3, 3)
    prompt = get_task("squad_v2").items(str(data_dir), "dev", tokenizer, 0, None)[0].prompt
    assert squad.input_tokens[0] == len(tokenizer.encode(prompt))
    assert squad.output_tokens[:2] == (len(tokenizer.encode("France")), len(tokenizer.encode("")))
    assert len(tokenizer.encode(LONG_ANSWER)) > squad.output_tokens[2] == 8  # max_new_tokens


def test_suite_workloads_fall_back_to_the_paper_defaults(tokenizer, data_dir):
    notes = []
    workloads = suite_workloads(["cb", "rte"], str(data_dir), tokenizer, note=notes.append)
    assert [w.source for w in workloads] == [MEASURED, PAPER_DEFAULTS]
    assert len(notes) == 1 and notes[0].startswith("rte: no data")


def test_the_recommendation_is_the_fastest_layout_that_fits():
    works = [workload(GENERATE, [20, 30], [3, 4]), workload(SCORE, [10], [10])]
    layouts = {"slow": LinearTimes(2.0), "fast": LinearTimes(1.0), "fastest": LinearTimes(0.5)}
    fits = {"slow": True, "fast": True, "fastest": False}
    estimate = estimate_suite(works, layouts, batch_size=2, fits=fits)
    assert estimate.recommended == "fast"
    assert estimate.total_seconds("slow") == pytest.approx(2 * estimate.total_seconds("fast"))
    table = suite_time.format_table(estimate)
    assert "fast*" in table and "fastest*" not in table and "recommended: fast," in table
    report = estimate.to_json()
    assert report["recommended"] == "fast" and [x["fits"] for x in report["layouts"]] == [
        True,
        True,
        False,
    ]
    assert report["tasks"][0]["seconds"]["fast"] == pytest.approx(
        estimate.estimates["fast"][0].seconds
    )
    assert estimate_suite(works, layouts, 2, fits={"fastest": False}).recommended is None
    assert estimate_suite(works, layouts, 2).recommended == "fastest"


def test_table_groups_the_flores_directions_and_names_the_paper_defaults():
    tasks = ["flores101:en-de", "flores101:de-en", "wmt14:fr-en"]
    estimate = estimate_suite(suite_workloads(tasks), {"a": LinearTimes()}, batch_size=8)
    table = suite_time.format_table(estimate)
    assert "flores101 (2 tasks)" in table and "wmt14:fr-en" in table
    assert "published test/dev set sizes" in table
    assert suite_time.format_duration(3725) == "1h02m"
    assert suite_time.format_duration(75) == "1m15s"
