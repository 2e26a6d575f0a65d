"""Graph-mode tf.data readers of txt / jsonl (optionally gzipped) corpus files into documents.

txt: documents are separated by blank (empty or whitespace-only) lines. Lines are joined a batch
at a time; a document that grows beyond `max_document_bytes` across batches is emitted in pieces
at line boundaries, so a huge document never makes the reader hold unbounded strings.
jsonl: one JSON object per line; the document is its `text` string field. Parsing runs in a
tf.numpy_function over batches of lines (TF has no JSON op); other lines are skipped and counted
once each (by file and line number, however often the file is read again).

gzip: TF's reader stops silently at the end of a truncated file and fails with a bare
"inflate() failed" (no file name) on corrupt data. So before its first line is read, every .gz
file is decompressed once in Python (zlib checks the stream, its CRC and its length); a file that
fails is skipped whole, with a warning naming it and the reason, and counted in `bad_files`. The
result is cached per process by (path, size, modification time), so each file is checked once
however many passes and tasks read it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tasks import counters as counter_names
from tasks.corpus_files import gzip_problem
from tasks.counters import ScopedCounters

_JSONL_BATCH = 256
_LINE_BATCH = 1024


def _check_gzip(path: bytes, counters: ScopedCounters) -> np.bool_:
    """tf.numpy_function body: True when the gzip file is intact; else warns (once per file) and
    counts it in `bad_files`."""
    name = path.decode("utf-8", "surrogateescape")
    problem = gzip_problem(name)
    if problem is None:
        return np.bool_(True)
    if counters.note_bad_file(name, problem):
        logging.warning("skipping %s: %s; none of its lines are used", name, problem)
    return np.bool_(False)


def _lines(path: tf.Tensor, compression: str, counters: ScopedCounters) -> tf.data.Dataset:
    """The lines of one file; a gzip file that is not intact yields none (see the module doc)."""
    lines = tf.data.TextLineDataset(path, compression_type=compression)
    if not compression:
        return lines
    intact = tf.numpy_function(
        functools.partial(_check_gzip, counters=counters), [path], tf.bool, stateful=True
    )
    return lines.take(tf.where(intact, tf.constant(-1, tf.int64), tf.constant(0, tf.int64)))


def _txt_documents(
    path: tf.Tensor, compression: str, max_document_bytes: int, counters: ScopedCounters
) -> tf.data.Dataset:
    """Documents of one txt file: blank-line separated groups of lines joined with newlines.

    Lines are processed in batches: inside a batch, lines are grouped into documents with a
    segment join; the document still open at the end of a batch is carried into the next one, and
    emitted early (a piece ending at a line boundary) once it exceeds `max_document_bytes`.
    """
    lines = _lines(path, compression, counters)
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


def _parse_jsonl_lines(
    lines: np.ndarray, path: bytes, batch_index: np.int64, counters: ScopedCounters
) -> np.ndarray:
    """The `text` of each line of a batch ("" for blank and invalid lines; invalid ones are
    counted by file and line number). Invalid UTF-8 inside `text` is kept as raw bytes."""
    texts = []
    first_line = int(batch_index) * _JSONL_BATCH + 1
    for offset, raw in enumerate(lines):
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
            if raw.strip():  # blank lines are not errors, just nothing
                counters.record(counter_names.INVALID_JSON, (path, first_line + offset), 1)
            continue
        try:
            texts.append(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # lone surrogates written as \ud8xx escapes
            texts.append(text.encode("utf-8", "replace"))
    return np.array(texts, dtype=object)


def _jsonl_documents(
    path: tf.Tensor, compression: str, counters: ScopedCounters
) -> tf.data.Dataset:
    """Documents of one jsonl file; invalid lines are counted and dropped."""
    lines = _lines(path, compression, counters).batch(_JSONL_BATCH).enumerate()
    parse_lines = functools.partial(_parse_jsonl_lines, counters=counters)

    @tf.autograph.experimental.do_not_convert
    def parse(index, batch):
        texts = tf.numpy_function(parse_lines, [batch, path, index], tf.string, stateful=True)
        texts.set_shape(batch.shape)
        return tf.boolean_mask(texts, tf.strings.length(texts) > 0)

    return lines.map(parse).unbatch()


def read_documents(
    paths: Sequence[str], counters: ScopedCounters, max_document_bytes: int
) -> tf.data.Dataset:
    """A dataset of document strings from txt/txt.gz/jsonl/jsonl.gz files, in a fixed order.

    Files of one kind are interleaved (up to 4 at a time, deterministic order); the kinds are then
    taken round-robin. Raises ValueError for a file with another suffix.
    """
    counters.declare(counter_names.INVALID_JSON, counter_names.BAD_FILES)
    groups = []
    for kind in ("txt", "jsonl"):
        for compression in ("", "GZIP"):
            suffix = f".{kind}" + (".gz" if compression else "")
            files = [p for p in paths if p.endswith(suffix)]
            if not files:
                continue
            if kind == "txt":
                reader = tf.autograph.experimental.do_not_convert(
                    lambda p, c=compression: _txt_documents(p, c, max_document_bytes, counters)
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
