"""Graph-mode tf.data readers of txt / jsonl (optionally gzipped) corpus files into documents.

txt: documents are separated by blank (empty or whitespace-only) lines. Lines are joined a batch
at a time; a document that grows beyond `max_document_bytes` across batches is emitted in pieces
at line boundaries, so a huge document never makes the reader hold unbounded strings.
jsonl: one JSON object per line; the document is its `text` string field. Parsing runs in a
tf.numpy_function over batches of lines (TF has no JSON op); other lines are skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tasks import counters as counter_names
from tasks.counters import ScopedCounters

_JSONL_BATCH = 256
_LINE_BATCH = 1024


def _txt_documents(path: tf.Tensor, compression: str, max_document_bytes: int) -> tf.data.Dataset:
    """Documents of one txt file: blank-line separated groups of lines joined with newlines.

    Lines are processed in batches: inside a batch, lines are grouped into documents with a
    segment join; the document still open at the end of a batch is carried into the next one, and
    emitted early (a piece ending at a line boundary) once it exceeds `max_document_bytes`.
    """
    lines = tf.data.TextLineDataset(path, compression_type=compression)
    # A trailing blank line closes the last document.
    lines = lines.concatenate(tf.data.Dataset.from_tensors(tf.constant("")))

    @tf.autograph.experimental.do_not_convert
    def step(carry, batch):
        blank = tf.equal(tf.strings.length(tf.strings.strip(batch)), 0)
        segment = tf.cumsum(tf.cast(blank, tf.int32), exclusive=True)
        count = tf.reduce_sum(tf.cast(blank, tf.int32)) + 1  # the last segment is still open
        joined = tf.strings.unsorted_segment_join(
            tf.boolean_mask(batch, ~blank), tf.boolean_mask(segment, ~blank), count, separator="\n"
        )
        first = joined[0]
        first = tf.where(
            tf.equal(tf.strings.length(carry), 0),
            first,
            tf.where(tf.equal(tf.strings.length(first), 0), carry, carry + "\n" + first),
        )
        joined = tf.concat([tf.reshape(first, [1]), joined[1:]], axis=0)
        closed, open_document = joined[:-1], joined[-1]
        overflow = tf.strings.length(open_document) > max_document_bytes
        emitted = tf.concat(
            [closed, tf.reshape(open_document, [1])[: tf.cast(overflow, tf.int32)]], 0
        )
        new_carry = tf.where(overflow, "", open_document)
        return new_carry, tf.boolean_mask(emitted, tf.strings.length(emitted) > 0)

    documents = lines.batch(_LINE_BATCH).scan(tf.constant(""), step)
    return documents.unbatch()


def _parse_jsonl_lines(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(texts, ok) for a batch of jsonl lines; invalid UTF-8 inside `text` is kept as raw bytes."""
    texts, ok = [], []
    for raw in lines:
        text = None
        if raw.strip():
            try:
                record = json.loads(raw.decode("utf-8", "surrogateescape"), strict=False)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                text = record["text"]
        if text is None:
            texts.append(b"")
            ok.append(not raw.strip())  # blank lines are not errors, just nothing
            continue
        try:
            texts.append(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # lone surrogates written as \ud8xx escapes
            texts.append(text.encode("utf-8", "replace"))
        ok.append(True)
    return np.array(texts, dtype=object), np.array(ok, dtype=bool)


def _jsonl_documents(
    path: tf.Tensor, compression: str, counters: ScopedCounters
) -> tf.data.Dataset:
    """Documents of one jsonl file; invalid lines are counted and dropped."""
    lines = tf.data.TextLineDataset(path, compression_type=compression).batch(_JSONL_BATCH)

    @tf.autograph.experimental.do_not_convert
    def parse(batch):
        texts, ok = tf.numpy_function(
            _parse_jsonl_lines, [batch], [tf.string, tf.bool], stateful=False
        )
        texts.set_shape(batch.shape)
        ok.set_shape(batch.shape)
        with tf.control_dependencies(
            [counters.add(counter_names.INVALID_JSON, tf.reduce_sum(tf.cast(~ok, tf.int64)))]
        ):
            keep = ok & (tf.strings.length(texts) > 0)
        return tf.boolean_mask(texts, keep)

    return lines.map(parse).unbatch()


def read_documents(
    paths: Sequence[str], counters: ScopedCounters, max_document_bytes: int
) -> tf.data.Dataset:
    """A dataset of document strings from txt/txt.gz/jsonl/jsonl.gz files, in a fixed order.

    Files of one kind are interleaved (up to 4 at a time, deterministic order); the kinds are then
    taken round-robin. Raises ValueError for a file with another suffix.
    """
    counters.declare(counter_names.INVALID_JSON)
    groups = []
    for kind in ("txt", "jsonl"):
        for compression in ("", "GZIP"):
            suffix = f".{kind}" + (".gz" if compression else "")
            files = [p for p in paths if p.endswith(suffix)]
            if not files:
                continue
            if kind == "txt":
                reader = tf.autograph.experimental.do_not_convert(
                    lambda p, c=compression: _txt_documents(p, c, max_document_bytes)
                )
            else:
                reader = tf.autograph.experimental.do_not_convert(
                    lambda p, c=compression: _jsonl_documents(p, c, counters)
                )
            groups.append(
                tf.data.Dataset.from_tensor_slices(files).interleave(
                    reader,
                    cycle_length=min(len(files), 4),
                    block_length=1,
                    num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True,
                )
            )
    unknown = [p for p in paths if not p.endswith((".txt", ".txt.gz", ".jsonl", ".jsonl.gz"))]
    if unknown:
        raise ValueError(f"unsupported corpus files (want .txt/.jsonl, optionally .gz): {unknown}")
    if not groups:
        raise ValueError("no corpus files to read")
    if len(groups) == 1:
        return groups[0]
    order = tf.data.Dataset.range(len(groups)).repeat()
    return tf.data.Dataset.choose_from_datasets(groups, order, stop_on_empty_dataset=False)
