"""[DOC] packing: tokenized documents concatenated into fixed-length sequences."""

from __future__ import annotations

import tensorflow as tf


def pack_documents(ds: tf.data.Dataset, *, length: int, doc_id: int) -> tf.data.Dataset:
    """Concatenates {"tokens"} documents, each followed by `doc_id`, and cuts the stream into
    sequences of exactly `length` tokens (only the very last one of a finite stream is shorter).

    Documents are split across sequence boundaries, so a sequence may start mid-document or with
    the separator. Output elements: {"tokens": int32 [<=length], "rng": int64 [2]} (the rng of
    the sequence's first token).
    """
    if length < 2:
        raise ValueError(f"packed length must be >= 2, got {length}")

    @tf.autograph.experimental.do_not_convert
    def with_separator(ex):
        tokens = tf.concat([ex["tokens"], tf.constant([doc_id], tf.int32)], axis=0)
        return {"tokens": tokens, "rng": tf.tile(ex["rng"][None, :], [tf.size(tokens), 1])}

    stream = ds.map(with_separator, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    packed = stream.batch(length)
    return packed.map(
        tf.autograph.experimental.do_not_convert(
            lambda ex: {"tokens": ex["tokens"], "rng": ex["rng"][0]}
        )
    )
