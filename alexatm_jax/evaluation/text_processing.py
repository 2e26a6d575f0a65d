"""Text operations of the few-shot recipes: sentence splitting, document truncation, output cuts."""

from __future__ import annotations

import re

from alexatm_jax.tokenization import Tokenizer

# A sentence ends after . ! ? (plus closing quotes/brackets) followed by whitespace, or right
# after the CJK / Devanagari full stops and marks, which need no following space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’»)\]]*\s+|(?<=[。！？।])\s*")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (stripped, empty ones dropped), split by `_SENTENCE_END`."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def truncate_document(text: str, tokenizer: Tokenizer, max_tokens: int) -> str:
    """`text` cut to `max_tokens` tokens and then back to its last full sentence (XSum recipe).

    Documents whose encoding (BOS/EOS included) has at most `max_tokens` ids are returned as
    they are. Longer ones keep their first `max_tokens - 1` pieces when the vocabulary has a BOS
    (the release decodes ids[1:550] of `<s> text </s>`) or `max_tokens` pieces otherwise, are
    decoded, split into sentences, and lose their last (cut) sentence; a text whose cut leaves a
    single partial sentence keeps it rather than becoming empty.
    """
    if len(tokenizer.encode(text)) <= max_tokens:
        return text
    keep = max_tokens - (1 if tokenizer.special.bos is not None else 0)
    cut = tokenizer.plain_text(tokenizer.pieces(text)[:keep])
    sentences = split_sentences(cut)
    return " ".join(sentences[:-1] if len(sentences) > 1 else sentences)


def cut_before(text: str, marker: str) -> str:
    """`text` before the first `marker`, stripped; all of `text` when `marker` is absent."""
    index = text.find(marker)
    return (text if index < 0 else text[:index]).strip()


def word_count(text: str) -> int:
    """Number of whitespace-separated words (the shot-selection length measure)."""
    return len(text.split())


def last_word(text: str) -> str:
    """The last whitespace-separated word of `text` without surrounding punctuation."""
    words = text.split()
    return words[-1].strip(".,;:!?\"'()[]«»“”‘’") if words else ""
