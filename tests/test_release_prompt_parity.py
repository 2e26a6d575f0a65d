"""A random reference AlexaTM model with a release-style 12-language vocabulary, converted with
alexatm-convert: `[CLM]` prompts in every language encode as the release tokenizer encodes them,
alexatm-generate's greedy ids equal the reference's forward loop on the release's encoding, and
alexatm-score equals the reference's cross-entropy."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("alexa_teacher_models")

from inference_helpers import (  # noqa: E402
    reference_model,
    release_tokenizer,
    sample_lines,
    train_release_sentencepiece_12,
)

from alexatm_jax.cli import convert as convert_cli  # noqa: E402
from alexatm_jax.cli import generate as generate_cli  # noqa: E402
from alexatm_jax.cli import score as score_cli  # noqa: E402
from alexatm_jax.tokenization import Tokenizer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The `device` argument is deprecated")
STEPS = 6


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference model, release-style .model path, converted checkpoint, the prompts)."""
    root = tmp_path_factory.mktemp("release_parity")
    spm_path = train_release_sentencepiece_12(str(root))
    tokenizer = Tokenizer(spm_path)
    pad = tokenizer.special.pad
    reference = reference_model(
        vocab_size=tokenizer.vocab_size,
        eos_id=2,
        pad_id=pad,
        decoder_start_id=2,
        bos_id=1,
        max_positions=96,
    )
    reference.save_pretrained(root / "hf", safe_serialization=True)
    shutil.copy(spm_path, root / "hf" / "20b_tokenizer.model")
    assert (
        convert_cli.main(["hf-to-jax", "--hf_dir", str(root / "hf"), "--out", str(root / "ckpt")])
        == 0
    )
    prompts = [lines[1][:40].strip() for lines in sample_lines(per_language=2).values()]
    return reference, spm_path, root / "ckpt", prompts


def reference_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy ids (EOS included) from full reference forwards, decoder started with </s>."""
    x, decoder = torch.tensor([prompt]), [2]
    with torch.no_grad():
        for _ in range(steps):
            logits = model(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                decoder_input_ids=torch.tensor([decoder]),
            ).logits[0, -1]
            decoder.append(int(logits.argmax()))
            if decoder[-1] == 2:
                break
    return decoder[1:]


def reference_log_prob(model, input_ids: list[int], labels: list[int]) -> float:
    """Summed log-probability of `labels` (the release's encoding of the target)."""
    x = torch.tensor([input_ids])
    with torch.no_grad():
        logits = model(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            decoder_input_ids=torch.tensor([[2] + labels[:-1]]),
        ).logits[0]
    log_probs = torch.log_softmax(logits.double(), -1)
    return float(log_probs[torch.arange(len(labels)), torch.tensor(labels)].sum())


def test_clm_generation_and_scores_equal_the_reference_on_release_encodings(converted, tmp_path):
    reference, spm_path, checkpoint, prompts = converted
    clm = ["[CLM] " + p for p in prompts]
    targets = [p[len(p) // 2 :] + " " for p in prompts]  # trailing space: the release keeps a `▁`
    expected = release_tokenizer(spm_path, clm + prompts + targets)["encoded"]
    tokenizer = Tokenizer(spm_path)
    assert [tokenizer.encode(t) for t in clm + prompts + targets] == expected
    assert all(
        e[1:3] == [tokenizer.processor.piece_to_id("\u2581"), tokenizer.special.clm]
        for e in expected[: len(clm)]
    )

    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert (
        generate_cli.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--input_file",
                str(tmp_path / "prompts.txt"),
                "--mode",
                "clm",
                "--format",
                "jsonl",
                "--max_new_tokens",
                str(STEPS),
                "--batch_size",
                "4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    greedy = [reference_greedy(reference, ids, STEPS) for ids in expected[: len(clm)]]
    assert [r["output_ids"] for r in rows] == greedy
    assert any(len(g) < STEPS for g in greedy) and any(len(g) == STEPS for g in greedy)

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"input": c, "target": t}, ensure_ascii=False) + "\n"
            for c, t in zip(clm, targets)
        ),
        encoding="utf-8",
    )
    assert (
        score_cli.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--input_file",
                str(pairs),
                "--output",
                str(tmp_path / "scores.jsonl"),
            ]
        )
        == 0
    )
    scores = [
        json.loads(line)
        for line in (tmp_path / "scores.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    for row, input_ids, labels in zip(scores, expected[: len(clm)], expected[2 * len(clm) :]):
        assert row["num_tokens"] == len(labels)
        assert row["score_sum"] == pytest.approx(
            reference_log_prob(reference, input_ids, labels), abs=1e-4
        )
