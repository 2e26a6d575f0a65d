"""Written-to-spoken formatter: turns a share of documents into ASR-like spoken form.

Spoken form here means: Unicode lower-casing, removal of punctuation (Unicode category P, which
covers the Devanagari danda and CJK full stops too) except apostrophes inside words, and all
whitespace (newlines included) collapsed to single spaces. Digits and symbols are kept: numbers
are not verbalised (that needs per-language grammars, which the paper does not describe).
Whether a document is converted is a keyed hash of its text, so a document always gets the same
form, whatever the seed, shard or epoch.
"""

from __future__ import annotations

import tensorflow as tf

_SPOKEN_HASH_KEY = [0x5B0CE4, 0xF0A3]  # SipHash key of the spoken/written decision
_BUCKETS = 10_000


def to_spoken_form(text: tf.Tensor) -> tf.Tensor:
    """The spoken form of a UTF-8 string tensor (any shape)."""
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, r"[^\P{P}']+", " ")  # punctuation other than '
    # Apostrophes that do not sit between two letters/digits are quotes: drop them.
    text = tf.strings.regex_replace(text, r"(^|[^\pL\pN])'+|'+([^\pL\pN]|$)", r"\1 \2")
    text = tf.strings.regex_replace(text, r"[\s\p{Z}]+", " ")
    return tf.strings.strip(text)


def is_spoken(text: tf.Tensor, share: float | tf.Tensor) -> tf.Tensor:
    """True for the documents (a `share` of them, by text hash) that get the spoken form."""
    bucket = tf.strings.to_hash_bucket_strong(text, _BUCKETS, key=_SPOKEN_HASH_KEY)
    return bucket < tf.cast(tf.round(tf.cast(share, tf.float64) * _BUCKETS), tf.int64)


@tf.function(
    autograph=False, input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.float32)]
)
def _maybe_spoken(text: tf.Tensor, share: tf.Tensor) -> tf.Tensor:
    return tf.cond(is_spoken(text, share), lambda: to_spoken_form(text), lambda: text)


def maybe_spoken(text: tf.Tensor, share: float) -> tf.Tensor:
    """`text` (a scalar string) in spoken form if it is among the `share` (0..1) of documents
    chosen by `is_spoken`, else unchanged."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"spoken-form share must be in [0, 1], got {share}")
    if share == 0.0:
        return text
    return _maybe_spoken(text, share)
