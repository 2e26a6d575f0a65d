"""13-gram decontamination: drop training documents that share a word 13-gram with a benchmark.

Units: the text is lower-cased, punctuation and symbols become spaces, each Han / Hiragana /
Katakana character becomes its own unit (Japanese has no spaces), and the rest is split on
whitespace. The n-gram set file (written by `alexatm-decontaminate`) holds one n-gram per line,
its units joined by single spaces; the pipeline compares 62-bit fingerprints of n-grams.
Benchmark texts with fewer than n units contribute nothing.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Callable, Iterable, Iterator

import tensorflow as tf

NGRAM_SIZE = 13
_FINGERPRINT_BUCKETS = 2**62
_BATCH = 1024


def ngram_units(text: tf.Tensor) -> tf.Tensor:
    """Matching units of a string tensor: rank-0 input -> [units], rank-1 -> ragged [b, units]."""
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, r"[\p{P}\p{S}\p{Z}\s]+", " ")
    text = tf.strings.regex_replace(text, r"[\p{Han}\p{Hiragana}\p{Katakana}]", r" \0 ")
    return tf.strings.split(text)


def text_ngrams(text: tf.Tensor, n: int = NGRAM_SIZE) -> tf.Tensor:
    """The n-grams (units joined by spaces) of a string tensor, with the rank rules of
    `ngram_units`; texts shorter than n units have none."""
    return tf.strings.ngrams(ngram_units(text), n, separator=" ")


def fingerprints(ngrams: tf.Tensor) -> tf.Tensor:
    """int64 fingerprints of n-gram strings (FarmHash, reduced to 62 bits)."""
    return tf.strings.to_hash_bucket_fast(ngrams, _FINGERPRINT_BUCKETS)


def benchmark_texts(path: str) -> Iterator[str]:
    """Texts of a benchmark file: each line of a text file, or every string value (searched
    recursively) of each object of a .jsonl file; `.gz` files are decompressed."""
    opener = gzip.open if path.endswith(".gz") else open
    is_jsonl = path.removesuffix(".gz").endswith(".jsonl")
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not is_jsonl:
                yield line.strip()
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e})") from e
            yield from _strings(record)


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def collect_ngrams(texts: Iterable[str], n: int = NGRAM_SIZE) -> tuple[set[str], int, int]:
    """(n-gram set, number of texts, number of texts shorter than n units) of `texts`."""
    found: set[str] = set()
    total = short = 0
    batch: list[str] = []

    def flush():
        nonlocal short
        grams = text_ngrams(tf.constant(batch), n)
        short += int(tf.reduce_sum(tf.cast(grams.row_lengths() == 0, tf.int32)))
        found.update(g.decode("utf-8") for g in grams.flat_values.numpy())
        batch.clear()

    for text in texts:
        batch.append(text)
        total += 1
        if len(batch) == _BATCH:
            flush()
    if batch:
        flush()
    return found, total, short


def write_ngrams(ngrams: Iterable[str], path: str) -> None:
    """Writes n-grams one per line, sorted, UTF-8."""
    with open(path, "w", encoding="utf-8") as f:
        for gram in sorted(ngrams):
            f.write(gram + "\n")


@functools.lru_cache(maxsize=4)
def _ngram_table(path: str) -> tuple[tf.lookup.StaticHashTable, int]:
    """(fingerprint -> 1 lookup table, n) for an n-gram file; n is read from its first line."""
    with open(path, encoding="utf-8") as f:
        grams = [line.rstrip("\n") for line in f if line.strip()]
    if not grams:
        raise ValueError(f"n-gram file {path} is empty; rebuild it with alexatm-decontaminate")
    n = len(grams[0].split(" "))
    with tf.init_scope():
        keys = tf.concat(
            [
                fingerprints(tf.constant(grams[i : i + _BATCH]))
                for i in range(0, len(grams), _BATCH)
            ],
            axis=0,
        )
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys)), default_value=0
        )
    return table, n


def contamination_check(ngram_path: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """A graph-mode predicate: does a scalar text share an n-gram with the set in `ngram_path`?"""
    table, n = _ngram_table(ngram_path)

    def contaminated(text: tf.Tensor) -> tf.Tensor:
        return tf.reduce_any(table.lookup(fingerprints(text_ngrams(text, n))) > 0)

    return contaminated
