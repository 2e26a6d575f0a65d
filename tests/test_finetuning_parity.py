"""Fine-tuning parity with the reference implementation (alexa-teacher-models 1.0.1).

A random tiny reference model with a release-style tokenizer (`<s>`=1, `</s>`=2, `[PAD]`=3,
decoder start `</s>`) is saved and converted (`convert_hf_to_checkpoint`, tokenizer included).
Our side runs the fine-tuning path: the model and tokenizer come from the checkpoint
(`model_from_checkpoint`), fixed input -> target pairs are read as a `Seq2SeqTask` from JSONL
(release template, unpacked rows), and the trainer's warm start and train step train on them.
The reference trains on the same token rows with its own seq2seq loss (`labels`, -100 on
padding, decoder inputs shifted from the labels by the model itself) and `torch.optim.AdamW`.
Every step's loss must agree within 1e-5 relative.
"""

from __future__ import annotations

import json
import random
import shutil

import jax
import numpy as np
import pytest
import torch
from alexatm_reference import random_reference_model, reference_config
from inference_helpers import train_tiny_sentencepiece
from training_reference import Recipe, our_train_step

import tasks
from alexatm_jax.conversion.hf_to_jax import convert_hf_to_checkpoint
from alexatm_jax.model import ModelConfig
from alexatm_jax.training import TrainConfig
from alexatm_jax.training.checkpoint_model import model_from_checkpoint
from tasks.seq2seq import Seq2SeqTask, register_seq2seq_task

pytestmark = pytest.mark.filterwarnings("ignore:The `device` argument is deprecated")

STEPS, ROWS = 20, 8
LENGTHS = {"inputs": 20, "targets": 14}
RECIPE = Recipe(steps=STEPS, peak_lr=2e-3, end_lr=1e-4, warmup=4)
LOSS_RTOL = 1e-5
WORDS = "the cat dog sat ran on under a red big house tree".split()


def _write_pairs(directory) -> None:
    """48 training pairs (a word list and its reverse) and 8 validation pairs as JSONL."""
    rng = random.Random(25)
    directory.mkdir()
    for split, count in (("train", 48), ("validation", 8)):
        with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(count):
                words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
                pair = {"source": " ".join(words), "reversed": " ".join(reversed(words))}
                f.write(json.dumps(pair) + "\n")


def _batches(config: TrainConfig, data) -> list[dict[str, np.ndarray]]:
    """STEPS batches of unpacked rows of the task, in file order (the pairs cycle)."""
    task = Seq2SeqTask(
        data=str(data),
        name="parity_pairs",
        input_field="source",
        target_field="reversed",
        prompt="Reverse: {input}",
    )
    name = register_seq2seq_task(task, config.vocab_path)
    ds = tasks.get_dataset(
        name,
        sequence_length=LENGTHS,
        vocab_path=config.vocab_path,
        pack=False,
        shuffle=False,
        num_epochs=None,
        decoder_start_id=config.model_config.decoder_start_token_id,
    )
    rows = ds.batch(ROWS).take(STEPS).as_numpy_iterator()
    return [{k: np.asarray(v) for k, v in batch.items()} for batch in rows]


def _reference_losses(model, batches) -> list[float]:
    """Per-step losses of the reference's own seq2seq loss, trained with torch AdamW."""
    optimizer = RECIPE.torch_adamw(model)
    losses = []
    for update, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = RECIPE.learning_rate(update)
        optimizer.zero_grad()
        labels = torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)
        labels[torch.tensor(batch["decoder_loss_weights"]) == 0] = -100
        loss = model(
            input_ids=torch.from_numpy(batch["encoder_input_tokens"]).long(),
            attention_mask=torch.from_numpy(batch["encoder_segment_ids"]).long(),
            labels=labels,
        ).loss
        loss.backward()
        losses.append(float(loss.detach()))
        RECIPE.torch_step(model, optimizer)
    return losses


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    """(reference losses, our losses, our batches, the config our side ran)."""
    root = tmp_path_factory.mktemp("finetune_parity")
    vocab = train_tiny_sentencepiece(str(root), release_style=True)
    reference = random_reference_model(
        reference_config(
            vocab_size=400,
            max_position_embeddings=32,
            pad_token_id=3,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=2,
            dropout=0.0,
            attention_dropout=0.0,
        ),
        seed=25,
    )
    reference.save_pretrained(root / "hf", safe_serialization=True)
    shutil.copy(vocab, root / "hf" / "release.model")  # converted into ckpt/tokenizer/
    convert_hf_to_checkpoint(root / "hf", root / "ckpt", show_progress=False)
    _write_pairs(root / "pairs")
    fresh = TrainConfig(
        model_config=ModelConfig(),  # what a fine-tuning gin leaves unbound
        train_steps=STEPS,
        batch_size=ROWS,
        optimizer_config=RECIPE.optimizer_config,
        init_from=str(root / "ckpt"),
        sequence_length=LENGTHS,
        pack=False,
    )
    config = model_from_checkpoint(fresh, {"dropout_rate": 0.0, "attention_dropout_rate": 0.0})
    batches = _batches(config, root / "pairs")
    state, step, partitioner = our_train_step(config, config.init_from)
    ours = []
    for batch in batches:
        state, metrics = step(state, partitioner.shard_batch(batch), jax.random.key(1))
        ours.append(float(metrics["loss"]))
    return _reference_losses(reference, batches), ours, batches, config


def test_the_model_and_tokenizer_come_from_the_checkpoint(trajectories):
    _, _, batches, config = trajectories
    cfg = config.model_config
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.decoder_start_token_id) == (400, 3, 2)
    assert config.vocab_path.endswith("tokenizer/release.model")
    # The release template: <s> before inputs and targets, </s> after; decoder starts with </s>.
    row = batches[0]
    assert row["encoder_input_tokens"][0, 0] == 1 and row["decoder_target_tokens"][0, 0] == 1
    assert row["decoder_input_tokens"][0, 0] == 2
    real = row["decoder_target_tokens"][0][row["decoder_segment_ids"][0] == 1]
    assert real[-1] == 2


def test_every_fine_tuning_step_matches_the_reference(trajectories):
    reference_losses, our_losses, _, _ = trajectories
    assert len(our_losses) == STEPS
    relative = np.abs(np.array(our_losses) - reference_losses) / np.array(reference_losses)
    print(f"max relative loss difference over {STEPS} steps: {relative.max():.2e}")
    assert relative.max() < LOSS_RTOL, f"per-step relative loss differences: {relative}"
    assert our_losses[-1] < our_losses[0] - 0.5, "the run did not learn: the check is empty"
