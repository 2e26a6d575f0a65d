"""The inference tokenizer reads special ids from the SentencePiece model and builds CLM prompts
the way the pretraining pipeline does."""

from __future__ import annotations

import pytest
from inference_helpers import train_tiny_sentencepiece

from alexatm_jax.tokenization import Tokenizer, clm_prompt


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tiny_sentencepiece(str(tmp_path_factory.mktemp("spm_ours"))))


@pytest.fixture(scope="module")
def release_like(tmp_path_factory) -> Tokenizer:
    return Tokenizer(
        train_tiny_sentencepiece(str(tmp_path_factory.mktemp("spm_release")), release_style=True)
    )


def test_special_ids_come_from_the_model(ours, release_like):
    s = ours.special
    assert (s.pad, s.eos, s.unk, s.bos) == (0, 1, 2, None)
    assert ours.processor.id_to_piece(s.clm) == "[CLM]"
    assert ours.processor.id_to_piece(s.doc) == "[DOC]"
    assert s.mask is None
    r = release_like.special
    assert (r.unk, r.bos, r.eos) == (0, 1, 2)
    assert release_like.processor.id_to_piece(r.pad) == "[PAD]"
    assert release_like.processor.id_to_piece(r.mask) == "[MASK]"
    assert release_like.processor.id_to_piece(r.clm) == "[CLM]"


def test_templates_and_clm_marker(ours, release_like):
    text = "The weather is nice today."
    assert ours.encode(text) == ours.pieces(text) + [1]
    assert release_like.encode(text) == [1] + release_like.pieces(text) + [2]
    # As the pretraining pipeline builds CLM inputs: [CLM] id, the text's pieces, EOS.
    assert ours.encode(clm_prompt(text)) == [ours.special.clm] + ours.pieces(text) + [1]
    # The release vocabulary encodes the marker as the release does: `<s> ▁ [CLM] ▁The ...`.
    space = release_like.processor.piece_to_id("\u2581")
    assert release_like.encode("[CLM] " + text) == (
        [1, space, release_like.special.clm] + release_like.pieces(text) + [2]
    )
    # Plain SentencePiece would surround the marker with stray whitespace pieces instead.
    assert ours.pieces("[CLM] " + text)[:2] != [ours.special.clm] + ours.pieces(text)[:1]
    assert clm_prompt("[CLM] x") == "[CLM] x"


def test_decode_stops_at_eos_and_skips_specials(ours, release_like):
    ids = ours.encode("Hello world")
    assert ours.decode(ids + ours.pieces(" after")) == "Hello world"
    assert ours.decode([ours.special.pad] + ids) == "Hello world"
    r = release_like
    assert r.decode([r.special.bos, r.special.pad] + r.pieces("Hello") + [r.special.eos]) == "Hello"
    assert ours.ids_of(["Hello"]) == [tuple(ours.pieces("Hello"))]


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer(str(tmp_path / "missing.model"))
