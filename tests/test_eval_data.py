"""Evaluation data from HuggingFace layouts (save_to_disk, parquet, the datasets cache) in the
Hub's schemas, the E2E NLG and WMT tasks, SQuAD v2's HasAns/NoAns split, and clear errors for bad
input (file, line and field named)."""

from __future__ import annotations

import pytest
import sacrebleu
from hf_layouts import cache, parquet, save_to_disk
from inference_helpers import train_tiny_sentencepiece
from rouge_score import rouge_scorer
from test_eval_prompts import StubModel, write_jsonl

from alexatm_jax.evaluation import evaluate, get_task, write_results
from alexatm_jax.evaluation.data import DataError
from alexatm_jax.tokenization import Tokenizer

SQUAD_HF = [
    {
        "id": "a",
        "title": "t",
        "context": "Paris is in France.",
        "question": "Where is Paris?",
        "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
    },
    {
        "id": "b",
        "title": "t",
        "context": "Nothing here!",
        "question": "Who?",
        "answers": {"text": [], "answer_start": []},
    },
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tiny_sentencepiece(str(tmp_path_factory.mktemp("spm"))))


def test_squad_from_save_to_disk_reports_has_and_no_answer_scores(tokenizer, tmp_path):
    save_to_disk(tmp_path / "squad_v2", {"validation": SQUAD_HF})
    prompt = (
        "[CLM] Context: Paris is in France. Question: What is the last word in the "
        "passage? Answer: France; Question: Where is Paris? Answer:"
    )
    stub = StubModel(tokenizer, {prompt: " the France;"})
    result = evaluate(get_task("squad_v2"), stub, str(tmp_path))
    assert stub.prompts[0] == prompt
    assert result.records[0]["reference"] == ["France", "in France"]
    # "the France" = "France" after normalisation; "out" for the unanswerable one is wrong.
    assert result.metrics["HasAns_exact"] == 100.0 and result.metrics["NoAns_exact"] == 0.0
    assert result.metrics["exact"] == 50.0
    assert (result.metrics["HasAns_total"], result.metrics["NoAns_total"]) == (1, 1)


def test_superglue_parquet_alternative_directory_and_cache(tokenizer, tmp_path, monkeypatch):
    parquet(
        tmp_path / "super_glue" / "multirc",
        {
            "validation": [
                {
                    "paragraph": "P.",
                    "question": "Q?",
                    "answer": "A",
                    "label": 1,
                    "idx": {"paragraph": 0, "question": 3, "answer": 0},
                },
                {
                    "paragraph": "P.",
                    "question": "Q?",
                    "answer": "B",
                    "label": 0,
                    "idx": {"paragraph": 0, "question": 3, "answer": 1},
                },
            ]
        },
    )
    stub = StubModel(tokenizer, score_fn=lambda i, t: 1.0 if t.endswith("Yes") else 0.0)
    result = evaluate(get_task("multirc"), stub, str(tmp_path))
    assert result.metrics["num_examples"] == 2 and result.metrics["exact_match"] == 0.0
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    cache(
        tmp_path / "hf_cache",
        "aps/super_glue",
        "boolq",
        {"validation": [{"question": "is it", "passage": "It is.", "idx": 0, "label": 1}]},
    )
    stub = StubModel(tokenizer)
    evaluate(get_task("boolq"), stub, str(tmp_path / "empty_data_dir"))
    assert stub.scored[0][0] == "It is. Question: is it? Answer: No"


def test_multilingual_configs_and_per_language_limit(tokenizer, tmp_path):
    for config, label in (("en", 0), ("fr", 2)):
        save_to_disk(
            tmp_path / "xnli" / config,
            {
                "test": [
                    {"premise": f"P{i} {config}", "hypothesis": "H", "label": label}
                    for i in range(3)
                ]
            },
        )
    save_to_disk(
        tmp_path / "xwinograd" / "jp",
        {"test": [{"sentence": "猫は_が好き。", "option1": "魚", "option2": "石", "answer": "1"}]},
    )
    stub = StubModel(tokenizer, score_fn=lambda i, t: 1.0 if t.endswith("True") else 0.0)
    result = evaluate(get_task("xnli"), stub, str(tmp_path), limit=2)
    assert result.metrics["num_examples"] == 4
    assert (result.metrics["accuracy_en"], result.metrics["accuracy_fr"]) == (100.0, 0.0)
    result = evaluate(get_task("xwinograd"), StubModel(tokenizer), str(tmp_path))
    assert "accuracy_ja" in result.metrics  # HF config `jp` is our `ja`
    write_jsonl(
        tmp_path / "pawsx" / "test.jsonl",
        [
            {"sentence1": "a", "sentence2": "b", "label": i % 2, "language": lang}
            for lang in ("de", "en")
            for i in range(3)
        ],
    )
    result = evaluate(get_task("pawsx"), StubModel(tokenizer), str(tmp_path), limit=1)
    assert result.metrics["num_examples"] == 2


def test_e2e_prompt_groups_references_and_scores(tokenizer, tmp_path):
    mr = "name[The Eagle], food[French]"
    parquet(
        tmp_path / "e2e_nlg",
        {
            "train": [{"meaning_representation": "name[Mill]", "human_reference": "The Mill."}],
            "test": [
                {"meaning_representation": mr, "human_reference": "The Eagle serves French."},
                {"meaning_representation": mr, "human_reference": "French food at The Eagle."},
                {"meaning_representation": "name[Rex]", "human_reference": "Rex."},
            ],
        },
    )
    prompt = (
        "[CLM] name[Mill] ==> sentence describing the place: The Mill. ; "
        f"{mr} ==> sentence describing the place:"
    )
    stub = StubModel(tokenizer, {prompt: " The Eagle serves French food. ; name[x]"})
    result = evaluate(get_task("e2e_nlg"), stub, str(tmp_path))
    assert stub.prompts[0] == prompt and len(stub.prompts) == 2
    predictions = [r["prediction"] for r in result.records]
    assert predictions[0] == "The Eagle serves French food."
    references = [["The Eagle serves French.", "French food at The Eagle."], ["Rex."]]
    direct = sacrebleu.corpus_bleu(
        predictions, [[r[0] for r in references], [references[0][1], None]]
    )
    assert result.metrics["bleu"] == pytest.approx(direct.score)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best = [
        max(scorer.score(r, p)["rougeL"].fmeasure for r in refs)
        for p, refs in zip(predictions, references)
    ]
    assert result.metrics["rougeL"] == pytest.approx(100 * sum(best) / 2)


def test_wmt_prompt_from_hf_translation_rows(tokenizer, tmp_path):
    save_to_disk(
        tmp_path / "wmt14" / "fr-en",
        {
            "validation": [{"translation": {"fr": "Bonjour.", "en": "Hello."}}],
            "test": [{"translation": {"fr": "Merci.", "en": "Thank you."}}],
        },
    )
    prompt = (
        "[CLM] Sentence: Bonjour.; Translation in English: Hello.; "
        "Sentence: Merci.; Translation in English:"
    )
    stub = StubModel(tokenizer, {prompt: " Thanks.; Sentence"})
    result = evaluate(get_task("wmt14:fr-en"), stub, str(tmp_path))
    assert stub.prompts == [prompt]
    assert result.metrics["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(["Thanks."], [["Thank you."]]).score
    )
    assert (
        result.metrics["bleu_tokenize"] == "13a" and "tok:13a" in result.metrics["bleu_signature"]
    )
    stub = StubModel(tokenizer)
    evaluate(get_task("wmt14:en-fr"), stub, str(tmp_path))
    assert stub.prompts[0].endswith("Sentence: Thank you.; Translation in French:")
    paths = write_results(result, tmp_path / "out")
    # sacrebleu signatures hold `|`: escaped so that the markdown table keeps its 4 columns.
    row = next(r for r in paths["results.md"].read_text().splitlines() if "bleu_signature" in r)
    assert row.replace("\\|", "").count("|") == 5


def test_spbleu_model_from_the_environment(tokenizer, tmp_path, monkeypatch):
    for split, pairs in {"dev": [("Hello.", "Hallo.")], "devtest": [("Yes.", "Ja.")]}.items():
        folder = tmp_path / "flores101" / split
        write_jsonl(folder / "en.jsonl", [{"sentence": s} for s, _ in pairs])
        write_jsonl(folder / "de.jsonl", [{"sentence": t} for _, t in pairs])
    monkeypatch.setenv("ALEXATM_SPBLEU_MODEL", tokenizer.path)  # a stand-in SentencePiece model
    result = evaluate(get_task("flores101:en-de"), StubModel(tokenizer), str(tmp_path))
    assert result.metrics["bleu_tokenize"] == "flores101"
    assert "tok:flores101" in result.metrics["bleu_signature"] and "bleu_13a" not in result.metrics
    monkeypatch.setenv("ALEXATM_SPBLEU_MODEL", str(tmp_path / "missing.model"))
    with pytest.raises(FileNotFoundError, match="missing.model"):
        evaluate(get_task("flores101:en-de"), StubModel(tokenizer), str(tmp_path))


BAD_INPUTS = [
    ("boolq", "dev", {"passage": "P", "question": "Q", "label": 2}, "field `label`"),
    ("boolq", "dev", {"passage": "P", "question": "Q", "label": "yes"}, "field `label`"),
    ("boolq", "dev", {"passage": "P", "question": 3, "label": 1}, "field `question`"),
    (
        "copa",
        "dev",
        {"premise": "P.", "choice1": "a", "choice2": "b", "question": "Effect", "label": 0},
        "field `question`",
    ),
    (
        "xwinograd",
        "test",
        {"sentence": "No blank.", "option1": "a", "option2": "b", "answer": "1", "language": "en"},
        "exactly one `_`",
    ),
    (
        "xwinograd",
        "test",
        {"sentence": "A _.", "option1": "a", "option2": "b", "answer": 3, "language": "en"},
        "field `answer`",
    ),
    ("squad_v2", "dev", {"context": "C", "question": "Q", "answers": "France"}, "field `answers`"),
    ("xnli", "test", {"premise": "P", "hypothesis": "H", "label": 0}, "language"),
    (
        "record",
        "dev",
        {"passage": "P", "query": "@placeholder", "entities": "A", "answers": ["A"]},
        "field `entities`",
    ),
]


@pytest.mark.parametrize(
    "task,split,row,message", BAD_INPUTS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_INPUTS)]
)
def test_bad_input_names_file_line_and_field(tokenizer, tmp_path, task, split, row, message):
    good = {"boolq": {"passage": "P", "question": "Q", "label": 1}}.get(task)
    write_jsonl(tmp_path / task / f"{split}.jsonl", ([good] if good else []) + [row])
    with pytest.raises(DataError) as error:
        evaluate(get_task(task), StubModel(tokenizer), str(tmp_path))
    line = 2 if good else 1
    assert f"{task}/{split}.jsonl:{line}" in str(error.value) and message in str(error.value)


def test_record_answers_outside_entities_are_kept_and_counted(tokenizer, tmp_path):
    write_jsonl(
        tmp_path / "record" / "dev.jsonl",
        [
            {
                "passage": "Obama met Merkel.",
                "query": "@placeholder spoke",
                "entities": ["Obama", "Merkel"],
                "answers": ["Angela Merkel"],
            }
        ],
    )
    stub = StubModel(tokenizer, score_fn=lambda i, t: 1.0 if "Merkel spoke" in t else 0.0)
    result = evaluate(get_task("record"), stub, str(tmp_path))
    assert result.metrics["num_examples"] == 1 and result.metrics["answers_not_among_entities"] == 1
    assert result.metrics["f1"] == pytest.approx(100 * 2 / 3)  # "Merkel" vs "Angela Merkel"
    assert result.records[0]["reference"] == ["Angela Merkel"]


def test_too_few_flores_dev_lines_for_the_shots(tokenizer, tmp_path):
    for split in ("dev", "devtest"):
        for lang in ("en", "de"):
            write_jsonl(
                tmp_path / "flores101" / split / f"{lang}.jsonl",
                [{"sentence": "a"}, {"sentence": "b"}],
            )
    with pytest.raises(DataError, match="only 2 sentence pairs for shots; 3 shots"):
        evaluate(get_task("flores101:en-de"), StubModel(tokenizer), str(tmp_path), shots=3)


def test_missing_data_lists_every_place_looked(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        evaluate(get_task("cb"), StubModel(tokenizer), str(tmp_path))
    message = str(error.value)
    assert "cb/dev.jsonl" in message and "super_glue/cb" in message and "datasets cache" in message


def test_flores_layouts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alexatm_jax.evaluation.translation_tasks import flores_sentences

    (tmp_path / "a" / "flores101" / "dev").mkdir(parents=True)
    (tmp_path / "a" / "flores101" / "dev" / "fra.dev").write_text("Un.\nDeux.\n")
    assert flores_sentences(tmp_path / "a", "dev", "fr") == ["Un.", "Deux."]
    (tmp_path / "b" / "flores200" / "devtest").mkdir(parents=True)  # flores_plus on the Hub
    pq.write_table(
        pa.Table.from_pylist([{"id": 0, "text": "Eins."}]),
        tmp_path / "b" / "flores200" / "devtest" / "deu_Latn.parquet",
    )
    assert flores_sentences(tmp_path / "b", "devtest", "de") == ["Eins."]
    save_to_disk(
        tmp_path / "c" / "flores101" / "all",
        {"dev": [{"id": 0, "sentence_eng": "One.", "sentence_jpn": "一。"}]},
    )
    assert flores_sentences(tmp_path / "c", "dev", "ja") == ["一。"]
    save_to_disk(tmp_path / "d" / "tam", {"dev": [{"id": 0, "sentence": 5}]})
    with pytest.raises(DataError, match="row 0: field `sentence` must be a str"):
        flores_sentences(tmp_path / "d", "dev", "ta")
    with pytest.raises(FileNotFoundError, match="tel.dev"):
        flores_sentences(tmp_path / "d", "dev", "te")
