"""Shared builders for the inference/evaluation tests: a random reference model converted to ours,
a tiny SentencePiece vocabulary, padded prompt batches."""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import numpy as np

from alexatm_jax.conversion import hf_names
from alexatm_jax.model import ModelConfig

EOS_BIAS = 4.0  # added to the EOS logit so that some rows finish early and others do not


def reference_model(
    vocab_size: int = 64,
    seed: int = 0,
    eos_id: int = 1,
    pad_id: int = 0,
    decoder_start_id: int = 0,
    layers: int = 2,
    d_model: int = 32,
    max_positions: int = 64,
    bos_id: int = -1,
):
    """A random-weight alexa_teacher_models seq2seq model (eval mode) with an EOS logit bias."""
    import alexa_teacher_models as atm
    import torch

    torch.manual_seed(seed)
    hf_cfg = atm.AlexaTMSeq2SeqConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=max_positions,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        decoder_start_token_id=decoder_start_id,
        dropout=0.0,
        init_std=0.3,
    )
    model = atm.AlexaTMSeq2SeqForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():
        model.final_logits_bias[0, eos_id] = EOS_BIAS
    return model


def convert_reference(model) -> tuple[ModelConfig, Any]:
    """Our ModelConfig and (unscanned) params for a reference model."""
    config = hf_names.hf_config_to_model_config(model.config.to_dict())
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    flat = {m.path: m.to_ours(state[m.hf_key]) for m in hf_names.tensor_mappings(config)}
    return config, jax.tree.map(np.asarray, flax.traverse_util.unflatten_dict(flat))


def padded_prompts(
    lengths: list[int], vocab_size: int, eos_id: int, pad_id: int, seed: int = 0
) -> list[list[int]]:
    """Random prompts of the given lengths (ids >= 3, EOS last)."""
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(3, vocab_size, n - 1))) + [eos_id] for n in lengths]


def train_tiny_sentencepiece(
    out_dir: str, vocab_size: int = 400, release_style: bool = False
) -> str:
    """A small unigram model trained on the sample corpus; returns its .model path.

    Default ids follow our vocabularies (pad 0, eos 1, unk 2, [CLM], [DOC] user-defined);
    `release_style` mimics the released tokenizer (unk 0, bos 1, eos 2, no pad id, [PAD],
    [MASK], [CLM], [DOC] user-defined).
    """
    import glob

    import sentencepiece as spm

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = []
    for lang in ("en", "de", "fr"):
        for path in sorted(glob.glob(os.path.join(repo, "data", "sample", lang, "*.txt")))[:2]:
            with open(path, encoding="utf-8") as f:
                lines += [line.strip() for line in f if line.strip()]
    lines += [
        "Article: a text ==> Short summary: short <br><br><br> ",
        "Sentence: one; Translation in German: eins; ",
    ] * 20
    prefix = os.path.join(out_dir, "release" if release_style else "ours")
    if release_style:
        ids = dict(
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            user_defined_symbols=["[PAD]", "[MASK]", "[CLM]", "[DOC]"],
        )
    else:
        ids = dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1, user_defined_symbols=["[CLM]", "[DOC]"])
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines[:400]),
        model_prefix=prefix,
        model_type="unigram",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.99,
        minloglevel=2,
        num_threads=1,
        **ids,
    )
    return prefix + ".model"


LANGUAGES_12 = ("ar", "en", "es", "fr", "de", "hi", "it", "ja", "mr", "pt", "ta", "te")


def sample_lines(languages=LANGUAGES_12, per_language: int = 60) -> dict[str, list[str]]:
    """Non-empty lines of data/sample's first file of each language."""
    import glob

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = {}
    for lang in languages:
        path = sorted(glob.glob(os.path.join(repo, "data", "sample", lang, "*.txt")))[0]
        with open(path, encoding="utf-8") as f:
            lines[lang] = [line.strip() for line in f if line.strip()][:per_language]
    return lines


def train_release_sentencepiece_12(out_dir: str, vocab_size: int = 1500) -> str:
    """A release-style unigram model (unk 0, <s> 1, </s> 2, [PAD] [MASK] [CLM] [DOC], byte
    fallback) over all 12 languages' scripts, some characters left out of the vocabulary."""
    import random

    import sentencepiece as spm

    lines = [line for group in sample_lines().values() for line in group]
    random.Random(0).shuffle(lines)
    prefix = os.path.join(out_dir, "release12")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        model_type="unigram",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.98,
        minloglevel=2,
        num_threads=1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=["[PAD]", "[MASK]", "[CLM]", "[DOC]"],
    )
    return prefix + ".model"


_RELEASE_TOKENIZER_SCRIPT = """
import json, os, sys, warnings
warnings.filterwarnings("ignore")
from alexa_teacher_models.tokenization_atm import AlexaTMTokenizerFast
request = json.load(open(sys.argv[1], encoding="utf-8"))
tokenizer = AlexaTMTokenizerFast(request["model"])
out = {"encoded": [tokenizer(t).input_ids for t in request["texts"]],
       "decoded": [tokenizer.decode(ids, skip_special_tokens=True) for ids in request["ids"]]}
json.dump(out, open(sys.argv[2], "w", encoding="utf-8"))
"""


def release_tokenizer(model_path: str, texts: list[str], ids: list[list[int]] = ()) -> dict:
    """The release's `AlexaTMTokenizerFast(model_path)`: {"encoded": input_ids per text,
    "decoded": decode(ids, skip_special_tokens=True) per id list}.

    Run in a subprocess: its SentencePiece-to-HF converter needs the pure-Python protobuf
    (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python), which must not leak into other tests.
    """
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        request, result = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(request, "w", encoding="utf-8") as f:
            json.dump({"model": model_path, "texts": list(texts), "ids": [list(i) for i in ids]}, f)
        env = dict(
            os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python", TF_CPP_MIN_LOG_LEVEL="3"
        )
        subprocess.run(
            [sys.executable, "-c", _RELEASE_TOKENIZER_SCRIPT, request, result],
            check=True,
            env=env,
            capture_output=True,
        )
        with open(result, encoding="utf-8") as f:
            return json.load(f)
