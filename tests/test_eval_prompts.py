"""The evaluation harness on tiny local JSONL sets, with a stub model that records its inputs:
exact prompts, shot selection, document truncation, output cuts, and metrics recomputed directly
with sacrebleu / rouge-score / the SQuAD formula."""

from __future__ import annotations

import json
import pathlib

import pytest
import sacrebleu
from inference_helpers import train_tiny_sentencepiece
from rouge_score import rouge_scorer

from alexatm_jax.decoding.engine import TargetScore
from alexatm_jax.decoding.text import Generation
from alexatm_jax.evaluation import evaluate, get_task, write_results
from alexatm_jax.evaluation import metrics as eval_metrics
from alexatm_jax.evaluation.text_processing import split_sentences
from alexatm_jax.tokenization import Tokenizer

LONG_WORDS = " ".join(["word"] * 200)
SENTENCES = [f"Sentence number {i} is here." for i in range(40)]
# The two en->de prompts the `data_dir` fixture's Flores files give (1 shot from dev).
FLORES_SHOT = "Sentence:  Hello.; Translation in German: Hallo.; "
FLORES_PROMPTS = [
    "[CLM] " + FLORES_SHOT + "Sentence:  Good day.; Translation in German:",
    "[CLM] " + FLORES_SHOT + "Sentence:  Yes.; Translation in German:",
]


class StubModel:
    """Records prompts; generates `outputs[prompt]` (default "out") and scores by a function."""

    def __init__(self, tokenizer, outputs=None, score_fn=None):
        self.tokenizer = tokenizer
        self.outputs = {} if outputs is None else outputs
        self.score_fn = score_fn or (lambda i, t: -len(t))
        self.prompts, self.scored = [], []

    def generate(self, prompts, options, stop=(), seed=0, truncate=False):
        self.prompts += list(prompts)
        return [
            Generation(p, self.outputs.get(p, "out"), self.outputs.get(p, "out"), [], 0.0)
            for p in prompts
        ]

    def score(self, inputs, targets, truncate=False):
        self.scored += list(zip(inputs, targets))
        return [
            TargetScore(self.score_fn(i, t), self.score_fn(i, t), 1)
            for i, t in zip(inputs, targets)
        ]


def write_jsonl(path: pathlib.Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tiny_sentencepiece(str(tmp_path_factory.mktemp("spm"))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("eval_data")
    write_jsonl(
        root / "xsum" / "train.jsonl",
        [
            {"document": LONG_WORDS, "summary": "too long"},
            {"document": "Short one.", "summary": "S1"},
            {"document": "Short two.", "summary": "S2"},
        ],
    )
    write_jsonl(
        root / "xsum" / "test.jsonl",
        [
            {"document": "The cat sat on the mat.", "summary": "A cat sat."},
            {"document": " ".join(SENTENCES), "summary": "Numbers."},
        ],
    )
    write_jsonl(root / "mlsum_de" / "train.jsonl", [{"text": "Kurz.", "summary": "K"}])
    write_jsonl(
        root / "mlsum_de" / "test.jsonl", [{"text": "Der Hund läuft.", "summary": "Hund läuft"}]
    )
    for split, rows in {
        "dev": [("Hello.", "Hallo."), ("Thanks.", "Danke.")],
        "devtest": [("Good day.", "Guten Tag."), ("Yes.", "Ja.")],
    }.items():
        write_jsonl(root / "flores101" / split / "en.jsonl", [{"sentence": s} for s, _ in rows])
        write_jsonl(root / "flores101" / split / "de.jsonl", [{"sentence": t} for _, t in rows])
    write_jsonl(
        root / "squad_v2" / "dev.jsonl",
        [
            {
                "context": "Paris is in France.",
                "question": "Where is Paris?",
                "answers": ["France"],
            },
            {"context": "Nothing here!", "question": "Who?", "answers": []},
        ],
    )
    write_jsonl(
        root / "boolq" / "dev.jsonl",
        [{"passage": "Sky is blue.", "question": "is the sky blue", "label": 1}],
    )
    write_jsonl(
        root / "cb" / "dev.jsonl",
        [
            {"premise": "P.", "hypothesis": "H.", "label": "neutral"},
            {"premise": "Q.", "hypothesis": "G.", "label": 0},
        ],
    )
    write_jsonl(
        root / "copa" / "dev.jsonl",
        [
            {
                "premise": "The man broke his toe.",
                "choice1": "He dropped a hammer on his foot.",
                "choice2": "He got a hole in his sock.",
                "question": "cause",
                "label": 0,
            }
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
                "passage": "Obama met Merkel.\n@highlight\nThey talked",
                "query": "@placeholder spoke",
                "entities": ["Obama", "Merkel", "Obama"],
                "answers": ["Merkel"],
            }
        ],
    )
    write_jsonl(
        root / "xwinograd" / "test.jsonl",
        [
            {
                "sentence": "The trophy did not fit because _ was big.",
                "option1": "the trophy",
                "option2": "the case",
                "answer": "1",
                "language": "en",
            },
            {
                "sentence": "Il _ dort.",
                "option1": "chat",
                "option2": "mur",
                "answer": 1,
                "language": "fr",
            },
        ],
    )
    return root


def test_xsum_prompts_shots_truncation_and_rouge(tokenizer, data_dir, tmp_path):
    outputs = {}
    stub = StubModel(tokenizer, outputs)
    shot = "Article: Short one. ==> Short summary: S1 <br><br><br> "
    first = "[CLM] " + shot + "Article: The cat sat on the mat. ==> Short summary:"
    outputs[first] = " The cat sat. <br><br><br> Article: more"
    result = evaluate(get_task("xsum"), stub, str(data_dir))
    assert stub.prompts[0] == first
    # The long document: 550 tokens, then back to the last complete sentence.
    long_prompt = stub.prompts[1]
    assert long_prompt.startswith("[CLM] " + shot + "Article: ")
    kept = long_prompt[len("[CLM] " + shot + "Article: ") : -len(" ==> Short summary:")]
    count = len(split_sentences(kept))
    assert kept == " ".join(SENTENCES[:count])
    # The 550-piece cut falls inside sentence count + 1 (or at its end): it is dropped.
    assert (
        len(tokenizer.pieces(" ".join(SENTENCES[: count + 2])))
        > 550
        >= len(tokenizer.pieces(" ".join(SENTENCES[:count])))
        > 400
    )
    predictions = [r["prediction"] for r in result.records]
    assert predictions == ["The cat sat.", "out"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    references = ["A cat sat.", "Numbers."]
    for name in ("rouge1", "rouge2", "rougeL"):
        direct = [scorer.score(r, p)[name].fmeasure for p, r in zip(predictions, references)]
        assert result.metrics[name] == pytest.approx(100 * sum(direct) / 2)
    paths = write_results(result, tmp_path)
    written = [json.loads(line) for line in paths["predictions.jsonl"].read_text().splitlines()]
    assert [w["prompt"] for w in written] == stub.prompts
    assert json.loads(paths["results.json"].read_text())["metrics"]["rouge1"] == pytest.approx(
        result.metrics["rouge1"]
    )
    assert "| xsum | test | rouge2 |" in paths["results.md"].read_text()


def test_xsum_zero_shot_and_mlsum_text_field(tokenizer, data_dir):
    stub = StubModel(tokenizer)
    evaluate(get_task("xsum"), stub, str(data_dir), shots=0, limit=1)
    assert stub.prompts == ["[CLM] Article: The cat sat on the mat. ==> Short summary:"]
    stub = StubModel(tokenizer, {"x": "y"})
    result = evaluate(get_task("mlsum_de"), stub, str(data_dir))
    assert stub.prompts == [
        "[CLM] Article: Kurz. ==> Short summary: K <br><br><br> "
        "Article: Der Hund läuft. ==> Short summary:"
    ]
    assert set(result.metrics) >= {"rouge1", "rouge2", "rougeL"}
    with pytest.raises(ValueError, match="only 1 documents"):
        evaluate(get_task("mlsum_de"), stub, str(data_dir), shots=2)


def test_flores_prompts_cut_and_sacrebleu(tokenizer, data_dir):
    prompts = FLORES_PROMPTS
    stub = StubModel(tokenizer, {prompts[0]: " Guten Tag.; Sentence: x", prompts[1]: " Nein."})
    result = evaluate(get_task("flores101:en-de"), stub, str(data_dir))
    assert stub.prompts == prompts
    predictions = [r["prediction"] for r in result.records]
    assert predictions == ["Guten Tag.", "Nein."]
    references = ["Guten Tag.", "Ja."]
    tokenize = eval_metrics.bleu_tokenizer()
    bleu_name = "spbleu" if tokenize == "flores101" else f"bleu_{tokenize}"
    direct = sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score
    assert result.metrics[bleu_name] == pytest.approx(direct)
    assert result.metrics["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(predictions, [references]).score
    )
    with pytest.raises(ValueError, match="unknown Flores language"):
        get_task("flores101:en-xx")


def test_flores_reports_spbleu_when_the_flores_model_is_on_disk(
    tokenizer, data_dir, tmp_path, monkeypatch
):
    """With a SentencePiece model at sacrebleu's Flores path (a stand-in: the real one is a
    download), the harness reports `spbleu`, equal to sacrebleu's own tokenize='flores101'."""
    import shutil

    import sacrebleu.tokenizers.tokenizer_spm as sacrebleu_spm
    import sacrebleu.utils

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tokenizer.path, models / "sacrebleu_tokenizer_spm.model")
    monkeypatch.setattr(sacrebleu.utils, "SACREBLEU_DIR", str(tmp_path))
    monkeypatch.setattr(sacrebleu_spm, "SACREBLEU_DIR", str(tmp_path))
    assert eval_metrics.bleu_tokenizer() == "flores101"
    prompts = FLORES_PROMPTS
    stub = StubModel(tokenizer, {prompts[0]: " Guten Tage.", prompts[1]: " Ja ja."})
    result = evaluate(get_task("flores101:en-de"), stub, str(data_dir))
    predictions = [r["prediction"] for r in result.records]
    direct = sacrebleu.corpus_bleu(predictions, [["Guten Tag.", "Ja."]], tokenize="flores101")
    assert "bleu_13a" not in result.metrics
    assert result.metrics["spbleu"] == pytest.approx(direct.score)
    assert 0 < result.metrics["spbleu"] < 100


def test_squad_prompt_and_official_scores(tokenizer, data_dir):
    prompts = [
        "[CLM] Context: Paris is in France. Question: What is the last word in the "
        "passage? Answer: France; Question: Where is Paris? Answer:",
        "[CLM] Context: Nothing here! Question: What is the last word in the passage? "
        "Answer: here; Question: Who? Answer:",
    ]
    stub = StubModel(tokenizer, {prompts[0]: " in France; Question: next", prompts[1]: ""})
    result = evaluate(get_task("squad_v2"), stub, str(data_dir))
    assert stub.prompts == prompts
    # "in France" vs "France": EM 0, F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3; "" vs no answer: 1, 1.
    assert result.metrics["exact"] == pytest.approx(50.0)
    assert result.metrics["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert eval_metrics.normalize_answer("The  Eiffel-Tower, a tower!") == "eiffeltower tower"


def test_choice_prompts_denoise_and_clm(tokenizer, data_dir):
    prefers_yes = lambda i, t: 1.0 if t.endswith("Yes") else 0.0
    stub = StubModel(tokenizer, score_fn=prefers_yes)
    result = evaluate(get_task("boolq"), stub, str(data_dir))
    context = "Sky is blue. Question: is the sky blue? Answer:"
    assert stub.scored == [(f"{context} No", f"{context} No"), (f"{context} Yes", f"{context} Yes")]
    assert result.metrics["accuracy"] == 100.0
    stub = StubModel(tokenizer, score_fn=prefers_yes)
    evaluate(get_task("boolq"), stub, str(data_dir), choice_mode="clm")
    assert stub.scored == [("[CLM] " + context, "No"), ("[CLM] " + context, "Yes")]

    stub = StubModel(tokenizer, score_fn=lambda i, t: -len(t))
    evaluate(get_task("copa"), stub, str(data_dir), choice_mode="clm")
    context = "[CLM] The man broke his toe because"
    assert stub.scored == [
        (context, "he dropped a hammer on his foot."),
        (context, "he got a hole in his sock."),
    ]

    stub = StubModel(tokenizer, score_fn=lambda i, t: 1.0 if "Neither" in t else 0.0)
    result = evaluate(get_task("cb"), stub, str(data_dir))
    assert stub.scored[0][0] == "P. Question: H. True, False, or Neither? Answer: True"
    assert result.metrics["accuracy"] == 50.0
    # Predictions all "Neither" (class 2): F1 = [0, 0, 2/3] -> macro 2/9.
    assert result.metrics["macro_f1"] == pytest.approx(100 * 2 / 9)


def test_multirc_record_and_xwinograd_metrics(tokenizer, data_dir):
    stub = StubModel(tokenizer, score_fn=lambda i, t: 1.0 if t.endswith("Yes") else 0.0)
    result = evaluate(get_task("multirc"), stub, str(data_dir))
    assert stub.scored[0][0] == (
        "Para. Question: Q1? Candidate answer: A Is the candidate answer correct? Answer: No"
    )
    # All predicted correct: labels 1, 0, 1 -> F1a = 2*2/(2*2+1) = 0.8; EM: only Q2 fully right.
    assert result.metrics["f1a"] == pytest.approx(80.0)
    assert result.metrics["exact_match"] == pytest.approx(50.0)

    stub = StubModel(tokenizer, score_fn=lambda i, t: 1.0 if "Obama spoke" in t else 0.0)
    result = evaluate(get_task("record"), stub, str(data_dir))
    assert [s[0] for s in stub.scored] == [
        "Obama met Merkel. - They talked Obama spoke",
        "Obama met Merkel. - They talked Merkel spoke",
    ]
    assert result.metrics == {
        "num_examples": 1,
        "exact_match": 0.0,
        "f1": 0.0,
        "answers_not_among_entities": 0,
        "truncated_inputs": 0,
    }
    assert result.records[0]["prediction"] == "Obama"

    stub = StubModel(
        tokenizer, score_fn=lambda i, t: 1.0 if "because the trophy" in i or "mur" in i else 0.0
    )
    result = evaluate(get_task("xwinograd"), stub, str(data_dir), choice_mode="clm")
    assert stub.scored[:2] == [
        ("[CLM] The trophy did not fit because the trophy", "was big."),
        ("[CLM] The trophy did not fit because the case", "was big."),
    ]
    assert result.metrics["accuracy_en"] == 100.0 and result.metrics["accuracy_fr"] == 0.0
    assert result.metrics["accuracy_language_mean"] == 50.0
    stub = StubModel(tokenizer)
    evaluate(get_task("xwinograd"), stub, str(data_dir))
    assert stub.scored[2][0] == "Il chat dort."


def test_task_errors(tokenizer, data_dir):
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
    with pytest.raises(ValueError, match="zero-shot"):
        evaluate(get_task("rte"), StubModel(tokenizer), str(data_dir), shots=1)
    with pytest.raises(FileNotFoundError, match="rte/dev.jsonl"):
        evaluate(get_task("rte"), StubModel(tokenizer), str(data_dir))


def test_tfds_converters_map_to_the_documented_schema():
    import numpy as np

    from alexatm_jax.evaluation.tfds_export import TFDS_SOURCES

    convert = lambda task, example: TFDS_SOURCES[task][2](example)
    assert convert("mlsum_de", {"text": b"Text \xc3\xa4", "target": b"S", "topic": b"x"}) == {
        "document": "Text ä",
        "summary": "S",
    }
    assert TFDS_SOURCES["mlsum_es"][0] == "gem/mlsum_es" and "mlsum_fr" not in TFDS_SOURCES
    assert convert("wmt14:fr-en", {"fr": b"Bonjour", "en": b"Hello"}) == {
        "fr": "Bonjour",
        "en": "Hello",
    }
    assert convert(
        "multirc",
        {
            "paragraph": b"P",
            "question": b"Q",
            "answer": b"A",
            "label": np.int64(1),
            "idx": {"paragraph": np.int32(3), "question": np.int32(4), "answer": np.int32(0)},
        },
    ) == {"paragraph": "P", "question": "Q", "answer": "A", "label": 1, "question_id": "3-4"}
    assert convert(
        "squad_v2",
        {
            "context": b"C",
            "question": b"Q",
            "id": b"i",
            "answers": {"text": np.array([b"x", b"y"]), "answer_start": np.array([0, 1])},
        },
    ) == {"context": "C", "question": "Q", "answers": ["x", "y"]}
    assert convert(
        "record",
        {
            "passage": b"P",
            "query": b"Q @placeholder",
            "entities": np.array([b"E1", b"E2"]),
            "answers": np.array([b"E2"]),
            "idx": {},
        },
    )["entities"] == ["E1", "E2"]
    assert TFDS_SOURCES["wsc"][0] == "super_glue/wsc.fixed"
