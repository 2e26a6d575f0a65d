"""`alexatm-info`: parameter counts from gin model files, computed without allocating."""

from __future__ import annotations

import re

import pytest

from alexatm_jax.cli import info

PAPER_TOTAL = 19.75e9


def run_info(capsys, *args: str) -> list[str]:
    assert info.main(list(args)) == 0
    return capsys.readouterr().out.strip().splitlines()


def total_of(lines: list[str]) -> int:
    match = re.fullmatch(r"total_params: (\d+)", lines[-1])
    assert match, f"last line is {lines[-1]!r}"
    return int(match.group(1))


def test_alexatm_20b_has_the_papers_parameter_count(capsys):
    lines = run_info(capsys, "--gin_file=models/alexatm_20b.gin")
    total = total_of(lines)
    assert abs(total - PAPER_TOTAL) / PAPER_TOTAL < 0.01
    modules = {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in (re.match(r"\s+(\w+)\s+([\d,]+)\s+[\d.]+%$", line) for line in lines)
        if m
    }
    assert sum(modules.values()) == total
    assert modules["lm_head"] == modules["token_embedder"] == modules["decoder_token_embedder"]
    assert any(line.startswith("Adam moments (2 x float32): ") for line in lines)


def closed_form_count(
    vocab: int,
    d: int,
    enc_layers: int,
    dec_layers: int,
    ffn: int,
    max_positions: int,
    type_vocab: int,
    vocab_matrices: int,
) -> int:
    """Parameters of an AlexaTM encoder-decoder, counted by hand (independent of the model code)."""
    attention = 4 * (d * d + d)
    mlp = d * ffn + ffn + ffn * d + d
    norm = 2 * d
    encoder_layer = attention + mlp + 2 * norm
    decoder_layer = 2 * attention + mlp + 3 * norm
    embeddings = vocab_matrices * vocab * d + max_positions * d + (max_positions + 2) * d
    return (
        embeddings
        + type_vocab * d
        + vocab
        + enc_layers * encoder_layer
        + dec_layers * decoder_layer
        + 2 * norm
    )


def test_20b_count_matches_the_hand_count_in_the_gin_file(capsys):
    lines = run_info(capsys, "--gin_file=models/alexatm_20b.gin")
    assert total_of(lines) == closed_form_count(153472, 4096, 46, 32, 16384, 1024, 2, 3)
    assert total_of(lines) == 19_750_336_384


def test_bindings_and_dtype_reach_the_count(capsys):
    lines = run_info(
        capsys,
        "--gin_file=models/tiny.gin",
        "--gin.VOCAB_SIZE=123",
        "--gin.ModelConfig.param_dtype='bfloat16'",
    )
    assert total_of(lines) == closed_form_count(123, 64, 2, 2, 128, 512, 2, 3)
    assert any(line.startswith("float32 master copy (params are bfloat16): ") for line in lines)
    small = run_info(capsys, "--gin_file=models/small.gin")
    assert total_of(small) == closed_form_count(32128, 512, 6, 6, 2048, 1024, 2, 1)


def test_bad_arguments_are_explained(capsys):
    with pytest.raises(SystemExit):
        info.main(["--gin_file=models/tiny.gin", "--d_model=3"])
    assert "gin bindings are written --gin." in capsys.readouterr().err
    assert info.main(["--gin_file=models/no_such_model.gin"]) == 2
    assert "gin file 'models/no_such_model.gin' not found; searched:" in capsys.readouterr().err
