"""A fine-tuning run's model comes from its init_from checkpoint
(alexatm_jax/training/checkpoint_model.py): architecture, vocabulary size, special ids and
tokenizer; run-time fields stay gin's; a contradicting binding is refused naming both values,
also by alexatm-train (exit 2, MODEL_DIR untouched)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from inference_helpers import train_tiny_sentencepiece
from random_params import random_params
from tiny_config import tiny_model_config

from alexatm_jax.checkpoints.model_checkpoint import save_model_checkpoint
from alexatm_jax.model import ModelConfig
from alexatm_jax.training import TrainConfig
from alexatm_jax.training.checkpoint_model import CheckpointConflictError, model_from_checkpoint

SOURCE = tiny_model_config(
    vocab_size=400, pad_token_id=3, eos_token_id=2, bos_token_id=1, decoder_start_token_id=2
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    vocab = train_tiny_sentencepiece(str(root), release_style=True)
    path = root / "model"
    save_model_checkpoint(path, SOURCE, random_params(SOURCE, seed=0, scale=0.02), [vocab])
    return str(path), vocab


def _fresh(init_from, **changes):
    return TrainConfig(
        model_config=ModelConfig(), train_steps=1, batch_size=1, init_from=init_from, **changes
    )


def test_the_model_and_tokenizer_come_from_the_checkpoint(checkpoint):
    path, _ = checkpoint
    config = model_from_checkpoint(_fresh(path), {"remat_policy": "full", "dropout_rate": 0.0})
    cfg = config.model_config
    assert cfg.replace(remat_policy="none", dropout_rate=SOURCE.dropout_rate) == SOURCE
    assert (cfg.remat_policy, cfg.dropout_rate) == ("full", 0.0)  # run-time fields: gin's
    assert config.vocab_path == os.path.join(path, "tokenizer", "release.model")
    # A training MODEL_DIR (model_config.json + tokenizer/) works the same way.
    assert model_from_checkpoint(_fresh(path), {}).model_config == SOURCE
    # A partial warm start keeps the configured architecture.
    partial = _fresh(path, init_from_prefixes=("encoder",))
    assert model_from_checkpoint(partial, {}) is partial


def test_a_contradicting_binding_is_refused_naming_both_values(checkpoint, tmp_path):
    path, vocab = checkpoint
    with pytest.raises(CheckpointConflictError) as error:
        model_from_checkpoint(_fresh(path), {"vocab_size": 512, "decoder_start_token_id": 2})
    message = str(error.value)
    assert "ModelConfig.vocab_size = 512" in message and "vocab_size = 400" in message
    assert "decoder_start_token_id" not in message  # equal values are fine
    other = tmp_path / "other.model"
    shutil.copy(train_tiny_sentencepiece(str(tmp_path)), other)  # our ids, another file
    with pytest.raises(CheckpointConflictError, match="train.vocab_path"):
        model_from_checkpoint(_fresh(path, vocab_path=str(other)), {})
    same = tmp_path / "same.model"
    shutil.copy(vocab, same)
    assert model_from_checkpoint(_fresh(path, vocab_path=str(same)), {}).vocab_path == str(same)


def test_alexatm_train_refuses_the_contradiction_before_model_dir(checkpoint, tmp_path, capsys):
    from alexatm_jax.cli.train import main

    path, _ = checkpoint
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text(json.dumps({"input": "a", "target": "b"}) + "\n")
    model_dir = tmp_path / "run"
    code = main(
        ["--gin_file", "gin/experiments/finetune.gin", "--model_dir", str(model_dir),
         f"--gin.INIT_FROM='{path}'", f"--gin.FINETUNE_DATA='{data}'",
         "--gin.ModelConfig.d_model=64"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "ModelConfig.d_model = 64" in err and "d_model = 32" in err
    assert not model_dir.exists()
