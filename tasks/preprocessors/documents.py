"""Document-level preprocessing: shuffling, UTF-8 repair, empty-document removal, long-document
splitting, optional decontamination, spoken form and tokenization, in three tf.data maps.

Elements are {"text": tf.string, "rng": int64 [2]} before tokenization and
{"tokens": int32 [n], "rng": int64 [2]} after it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import seqio
import tensorflow as tf
import tensorflow_text as tf_text

from tasks import counters as names
from tasks.counters import ScopedCounters, record_key
from tasks.preprocessors.seeds import example_seed
from tasks.preprocessors.spoken_form import maybe_spoken
from tasks.vocabularies import SpecialIds

_AUTOTUNE = tf.data.AUTOTUNE
# Leading/trailing ASCII or Unicode whitespace (RE2's \s alone is ASCII-only).
_EDGE_SPACE = r"^[\s\p{Z}]+|[\s\p{Z}]+$"
MIN_DOCUMENT_BYTES_LIMIT = 1024
# Source feature (tf.bool, True) present only on document streams that are to be shuffled.
SHUFFLE_FEATURE = "shuffle"


def repair_and_strip(text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(text with invalid UTF-8 bytes replaced by U+FFFD and edge whitespace removed,
    whether any byte was invalid) for a scalar string."""
    repaired = tf.strings.unicode_transcode(
        text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )
    return tf.strings.regex_replace(repaired, _EDGE_SPACE, ""), tf.not_equal(repaired, text)


def character_aligned_pieces(text: tf.Tensor, max_bytes: int) -> tf.Tensor:
    """Cuts valid UTF-8 `text` into consecutive pieces of at most `max_bytes` bytes, each cut
    moved back to the start of a character; [] for an empty text."""
    length = tf.strings.length(text)
    # Every cut moves back by at most 3 bytes, so cutting every max_bytes - 3 keeps pieces short.
    starts = tf.range(0, length, max_bytes - 3)
    for _ in range(3):  # a UTF-8 character has at most 3 continuation bytes (10xxxxxx)
        first = tf.io.decode_raw(tf.strings.substr(text, starts, tf.ones_like(starts)), tf.uint8)
        continuation = tf.equal(tf.bitwise.bitwise_and(first[:, 0], 0xC0), 0x80)
        starts = starts - tf.cast(continuation, tf.int32)
    ends = tf.concat([starts[1:], tf.reshape(length, [1])], axis=0)
    return tf.strings.substr(text, starts, ends - starts)


@tf.function(
    autograph=False, input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)]
)
def _prepare_text(text: tf.Tensor, max_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(pieces [0..k], invalid UTF-8?, cleaned length in bytes) of one raw document."""
    text, invalid = repair_and_strip(text)
    length = tf.strings.length(text)
    pieces = tf.cond(
        length > max_bytes,
        lambda: character_aligned_pieces(text, max_bytes),
        lambda: tf.reshape(text, [1])[: tf.minimum(length, 1)],
    )
    return pieces, invalid, length


@functools.lru_cache(maxsize=8)
def _tokenizer(model_path: str, model: bytes) -> Callable[[tf.Tensor], tf.Tensor]:
    """One TF SentencePiece tokenizer per model, traced once and shared by all tasks."""
    with tf.init_scope():
        tokenizer = tf_text.SentencepieceTokenizer(model=model)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([], tf.string)])
    def tokenize(text):
        return tf.cast(tokenizer.tokenize(text), tf.int32)

    return tokenize


def shuffle_documents(ds: tf.data.Dataset, *, window: int, salt: int) -> tf.data.Dataset:
    """Stateless document shuffle of streams marked with `SHUFFLE_FEATURE` (the source's caller
    asked for shuffling): each window of `window` consecutive documents is permuted with a seed
    from (rng, salt, window index). Unmarked streams keep their order and pass through at once,
    without waiting for a window (a repeated validation split of a language with one held-out
    document would otherwise re-read its files `window` times before the first document).

    It runs after SeqIO's repeat, so windows keep moving across epochs and every epoch has another
    order, yet the stream is a pure function of the seed: iterating it again repeats it.
    Output elements: {"text", "rng"}.
    """
    if window < 1:
        raise ValueError(f"shuffle window must be >= 1, got {window}")
    if SHUFFLE_FEATURE not in ds.element_spec:
        return ds

    @tf.autograph.experimental.do_not_convert
    def permute(index, batch):
        size = tf.shape(batch["text"])[0]
        seed = example_seed(batch["rng"][0], salt, index)
        order = tf.argsort(tf.random.stateless_uniform([size], seed=seed))
        return {"text": tf.gather(batch["text"], order), "rng": tf.gather(batch["rng"], order)}

    return ds.batch(window).enumerate().map(permute, num_parallel_calls=_AUTOTUNE).unbatch()


def prepare_documents(
    ds: tf.data.Dataset, *, max_bytes: int, counters: ScopedCounters
) -> tf.data.Dataset:
    """Repairs invalid UTF-8 (counted), strips edge whitespace, drops empty and whitespace-only
    documents (counted) and cuts documents over `max_bytes` bytes into pieces (counted), each
    piece then being a document of its own (cuts fall at character boundaries, maybe mid-word)."""
    if max_bytes < MIN_DOCUMENT_BYTES_LIMIT:
        raise ValueError(
            f"max_document_bytes must be >= {MIN_DOCUMENT_BYTES_LIMIT}, got {max_bytes}"
        )
    counters.declare(names.DOCUMENTS, names.EMPTY, names.INVALID_UTF8, names.SPLIT_LONG)

    @tf.autograph.experimental.do_not_convert
    def prepare(ex):
        pieces, invalid, length = _prepare_text(ex["text"], max_bytes)
        key = record_key(ex["text"])  # problem counters count each distinct document once
        updates = [
            counters.add(names.DOCUMENTS, 1),
            counters.add(names.INVALID_UTF8, invalid, key),
            counters.add(names.EMPTY, tf.equal(length, 0), key),
            counters.add(names.SPLIT_LONG, length > max_bytes, key),
        ]
        with tf.control_dependencies(updates):
            rng = tf.tile(ex["rng"][None, :], [tf.size(pieces), 1])
        return {"text": pieces, "rng": rng}

    return ds.map(prepare, num_parallel_calls=_AUTOTUNE).unbatch()


def tokenize_documents(
    ds: tf.data.Dataset,
    *,
    vocabulary: seqio.SentencePieceVocabulary,
    ids: SpecialIds,
    counters: ScopedCounters,
    spoken_share: float,
    contaminated: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """{"text"} -> {"tokens": int32 [n]}: drops documents for which `contaminated(text)` holds
    (counted), converts a `spoken_share` of them to spoken form, tokenizes, and removes [CLM]/[DOC]
    ids that raw text produced (counted) so only the pipeline places them. Documents left with no
    token are dropped."""
    counters.declare(names.SPECIAL_PIECES, names.CONTAMINATED)
    encode = _tokenizer(vocabulary.sentencepiece_model_file, vocabulary.sp_model)

    @tf.autograph.experimental.do_not_convert
    def tokenize(ex):
        text = ex["text"]
        dirty = contaminated(text) if contaminated else tf.constant(False)
        text = maybe_spoken(text, spoken_share)
        tokens = encode(text)
        special = tf.equal(tokens, ids.clm) | tf.equal(tokens, ids.doc)
        key = record_key(ex["text"])
        updates = [
            counters.add(names.SPECIAL_PIECES, tf.reduce_sum(tf.cast(special, tf.int64)), key),
            counters.add(names.CONTAMINATED, dirty, key),
        ]
        with tf.control_dependencies(updates):
            keep = tf.logical_not(special) & tf.logical_not(dirty)
            return {"tokens": tf.boolean_mask(tokens, keep), "rng": ex["rng"]}

    ds = ds.map(tokenize, num_parallel_calls=_AUTOTUNE)
    return ds.filter(tf.autograph.experimental.do_not_convert(lambda ex: tf.size(ex["tokens"]) > 0))
