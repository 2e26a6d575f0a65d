"""On a release-style vocabulary, `Tokenizer` encodes and decodes exactly as the release's
`AlexaTMTokenizerFast` (run in a subprocess), for prompts in all 12 languages' scripts, with and
without `[CLM] `, the paper's prompt templates, `<br>`, repeated and trailing whitespace, newlines,
literal special pieces and empty strings."""

from __future__ import annotations

import random

import pytest
from inference_helpers import release_tokenizer, sample_lines, train_release_sentencepiece_12

from alexatm_jax.tokenization import Tokenizer

EDGE_CASES = [
    "",
    " ",
    "  ",
    "[CLM] ",
    "[CLM]",
    "[CLM]  Unable to x",
    "[CLM]x",
    "abc ",
    " abc",
    "a  b   c",
    "a\nb\n",
    "\tx\t",
    "<br>",
    "a <br><br><br> b",
    "x </s> y",
    "<s>x",
    "a [MASK] b",
    "a[CLM]b",
    "[PAD]",
    "<unk> <0x41>",
    "\u2581x \u2581 y",
    "Hello . World , it 's ok !",
    "ﬁ ｆｕｌｌ ① ＡＢＣ",
]


def texts_in_12_languages() -> list[str]:
    """Sample sentences of every language, whole, cut mid-word, with [CLM], doubled and trailing
    spaces, and in the paper's XSum and Flores templates."""
    rng = random.Random(0)
    texts = []
    for lines in sample_lines(per_language=200).values():
        for line in rng.sample(lines, 8):
            cut = rng.randint(0, len(line))
            texts += [
                line,
                "[CLM] " + line,
                "[CLM] " + line[:cut] + " ",
                line[:cut] + "  " + line[cut:] + "\n",
                f"[CLM] Article: {line} ==> Short summary: {line[:cut]} <br><br><br> "
                f"Article: {line[cut:]} ==> Short summary:",
                f"[CLM] Sentence:  {line[:cut]}; Translation in German: {line}; "
                f"Sentence:  {line[cut:]}; Translation in German:",
            ]
    return texts


@pytest.fixture(scope="module")
def release_model(tmp_path_factory) -> str:
    return train_release_sentencepiece_12(str(tmp_path_factory.mktemp("release12")))


@pytest.fixture(scope="module")
def reference(release_model):
    """(texts, random id lists, the release tokenizer's encodings and decodings)."""
    tokenizer = Tokenizer(release_model)
    rng = random.Random(1)
    skipped = {
        tokenizer.special.bos,
        tokenizer.special.eos,
        tokenizer.special.unk,
        tokenizer.special.pad,
        tokenizer.special.mask,
    }
    ids = [
        [
            i
            for i in (rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(0, 24)))
            if i not in skipped
        ]
        for _ in range(300)
    ]
    texts = EDGE_CASES + texts_in_12_languages()
    return texts, ids, release_tokenizer(release_model, texts, ids)


def test_encode_equals_the_release_tokenizer_for_every_text(release_model, reference):
    tokenizer = Tokenizer(release_model)
    assert tokenizer.convention == "release"
    texts, _, expected = reference
    assert len(texts) > 12 * 8 * 6
    mismatches = [
        (t, e, tokenizer.encode(t))
        for t, e in zip(texts, expected["encoded"])
        if tokenizer.encode(t) != e
    ]
    assert not mismatches, mismatches[:3]
    piece = tokenizer.processor.id_to_piece
    # The release keeps a lone `▁` before [CLM] and at the end of a text ending in a space.
    assert [piece(i) for i in tokenizer.encode("[CLM] abc ")][:3] == ["<s>", "\u2581", "[CLM]"]
    assert [piece(i) for i in tokenizer.encode("abc ")][-2:] == ["\u2581", "</s>"]
    assert tokenizer.encode("") == [1, 2]
    unknown = "\u0fff"  # not in the vocabulary: one <unk>, however many in a row
    assert tokenizer.encode(unknown * 3) == [1, tokenizer.processor.piece_to_id("\u2581"), 0, 2]


def test_decode_equals_the_release_decode(release_model, reference):
    tokenizer = Tokenizer(release_model)
    texts, ids, expected = reference
    for id_list, text in zip(ids, expected["decoded"]):
        assert tokenizer.decode(id_list) == text, [
            tokenizer.processor.id_to_piece(i) for i in id_list
        ]
    # Generated ids: decoding stops at the first EOS and leaves <s>, <unk>, [PAD], [MASK] out,
    # as the release's decode(..., skip_special_tokens=True) of a from_pretrained tokenizer.
    s = tokenizer.special
    body = tokenizer.pieces("Hello world")
    assert tokenizer.decode([s.bos, s.unk] + body + [s.pad, s.eos] + body) == "Hello world"
