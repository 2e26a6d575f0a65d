"""Logits parity with the reference implementation, through the real conversion path.

Each case: a random tiny reference model is saved with `save_pretrained` (.bin or safetensors,
single file or sharded with an index), converted by `convert_hf_to_checkpoint`, loaded with
`alexatm_jax.load`, and its logits on a padded batch compared on the real positions.
"""

from __future__ import annotations

import numpy as np
import pytest
from alexatm_reference import (
    max_abs_diff_on_real_positions,
    padded_batch,
    random_reference_model,
    reference_config,
    reference_logits,
)

import alexatm_jax
from alexatm_jax.conversion.hf_to_jax import convert_hf_to_checkpoint
from alexatm_jax.model.layout import is_scanned

# transformers 4.30.2 warns about its own use of a deprecated argument in every forward.
pytestmark = pytest.mark.filterwarnings("ignore:The `device` argument is deprecated")
TOLERANCE = 1e-4
CASES = {
    # name: (reference config overrides, save_pretrained kwargs, convert with scan_layers)
    "untied_bin": (
        dict(share_embeddings=False, tie_word_embeddings=False, type_vocab_size=2),
        dict(safe_serialization=False),
        False,
    ),
    "shared_tied_safetensors": (
        dict(
            share_embeddings=True,
            tie_word_embeddings=True,
            type_vocab_size=1,
            decoder_attention_heads=2,
            pad_token_id=1,
            eos_token_id=2,
            bos_token_id=0,
        ),
        dict(safe_serialization=True),
        True,
    ),
    "untied_tied_head_sharded_safetensors": (
        dict(share_embeddings=False, tie_word_embeddings=True, type_vocab_size=2),
        dict(safe_serialization=True, max_shard_size="40KB"),
        False,
    ),
    "shared_untied_head_sharded_bin": (
        dict(
            share_embeddings=True,
            tie_word_embeddings=False,
            type_vocab_size=1,
            hidden_act="gelu_new",
        ),
        dict(safe_serialization=False, max_shard_size="40KB"),
        True,
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def converted_case(request, tmp_path_factory):
    """(case name, reference model, loaded converted model, hf directory)."""
    overrides, save_kwargs, scan_layers = CASES[request.param]
    reference = random_reference_model(reference_config(**overrides), seed=len(request.param))
    root = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(root / "hf", **save_kwargs)
    convert_hf_to_checkpoint(
        root / "hf", root / "ckpt", scan_layers=scan_layers, show_progress=False
    )
    return request.param, reference, alexatm_jax.load(root / "ckpt"), root / "hf"


def test_saved_files_are_the_intended_format(converted_case):
    name, _, loaded, hf_dir = converted_case
    files = {p.name for p in hf_dir.iterdir()}
    suffix = "safetensors" if "safetensors" in name else "bin"
    if "sharded" in name:
        index = (
            "model.safetensors.index.json"
            if suffix == "safetensors"
            else "pytorch_model.bin.index.json"
        )
        assert index in files
        assert len([f for f in files if f.endswith(suffix)]) > 1
    else:
        assert ("model.safetensors" if suffix == "safetensors" else "pytorch_model.bin") in files
    assert is_scanned(loaded.params) == CASES[name][2] == loaded.config.scan_layers


def test_logits_match_reference_on_padded_batch(converted_case):
    name, reference, loaded, _ = converted_case
    cfg = loaded.config
    rng = np.random.default_rng(7)
    batch = padded_batch(rng, cfg.vocab_size, cfg.type_vocab_size, [11, 6, 3], [7, 4, 2])
    ours = loaded.logits(batch)
    theirs = reference_logits(reference, batch)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    diff = max_abs_diff_on_real_positions(ours, theirs, batch)
    assert diff < TOLERANCE, f"{name}: max abs logits difference {diff}"
    assert np.abs(theirs).max() > 1.0  # the comparison is not between near-zero logits


def test_encoder_states_match_reference(converted_case):
    _, reference, loaded, _ = converted_case
    import torch

    cfg = loaded.config
    batch = padded_batch(
        np.random.default_rng(3), cfg.vocab_size, cfg.type_vocab_size, [9, 5], [2, 2]
    )
    with torch.no_grad():
        theirs = reference.model.encoder(
            input_ids=torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
            attention_mask=torch.tensor(batch["encoder_segment_ids"], dtype=torch.long),
            token_type_ids=torch.tensor(batch["encoder_token_type_ids"], dtype=torch.long),
        ).last_hidden_state.numpy()
    ours = loaded.encode(batch)
    real = batch["encoder_segment_ids"].astype(bool)
    assert np.abs(ours - theirs)[real].max() < TOLERANCE
