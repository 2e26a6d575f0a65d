"""Counters of skipped and repaired input, updated from inside tf.data functions.

Two kinds, keyed by (scope, name) where the scope is normally a task or source name:

- `documents` counts records as they are processed, re-reads included (a throughput figure);
- every problem counter (the rest) counts *distinct* records: each bad record is counted once,
  however many times it is read again — in a later pass over a repeated split, by the other
  objective's task, by the validation split's reader. A record is identified by its file and
  line (jsonl lines, files) or by a fingerprint of its text (documents; so two byte-identical
  bad documents count once). After one full pass over the data the counts are those of the data,
  and they stay there.

Preprocessors create their counters eagerly when the pipeline is built and add to them in graph
mode; `snapshot()`/`totals()` read them at any time (e.g. per evaluation period of a training run,
or from `alexatm-inspect`). Counts cover what the input pipeline has processed, which runs ahead
of what the consumer has taken by the prefetch depth. `bad_files()` names the files that were
skipped and why.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import tensorflow as tf

# Counter names, one per kind of event (documented in docs/data.md#bad-input).
DOCUMENTS = "documents"  # records that reached the cleaning step (re-reads included)
EMPTY = "empty_documents"  # empty or whitespace-only records, dropped
INVALID_UTF8 = "invalid_utf8_documents"  # records with invalid UTF-8, bytes replaced by U+FFFD
INVALID_JSON = "invalid_jsonl_records"  # jsonl lines that are not an object with a string `text`
SPLIT_LONG = "long_documents_split"  # documents longer than the limit, cut into pieces
CONTAMINATED = "decontaminated_documents"  # documents sharing a 13-gram with a benchmark, dropped
SPECIAL_PIECES = "special_pieces_removed"  # [CLM]/[DOC] ids produced from raw text, removed
CLM_TOO_SHORT = "clm_documents_too_short"  # documents under 2 tokens, unusable for CLM
BAD_FILES = "bad_files"  # unreadable, not gzip, truncated or corrupt gzip: skipped whole

# The counters that count distinct bad records (all but DOCUMENTS), in reporting order.
PROBLEMS = (
    BAD_FILES,
    INVALID_JSON,
    INVALID_UTF8,
    EMPTY,
    SPLIT_LONG,
    SPECIAL_PIECES,
    CLM_TOO_SHORT,
    CONTAMINATED,
)


def record_key(value: tf.Tensor) -> tf.Tensor:
    """An int64 fingerprint identifying a record (a scalar string, or any tensor's contents)."""
    if value.dtype != tf.string:
        value = tf.io.serialize_tensor(value)
    return tf.strings.to_hash_bucket_fast(value, 2**63 - 1)


class PipelineCounters:
    """A thread-safe registry of counters keyed by (scope, name): plain int64 tf.Variables for
    DOCUMENTS, and for problem counters int64 -> int64 hash tables (record key -> amount) filled
    from graph mode, or Python dicts filled from tf.numpy_function code."""

    def __init__(self):
        self._lock = threading.Lock()
        self._variables: dict[tuple[str, str], tf.Variable] = {}
        self._tables: dict[tuple[str, str], tf.lookup.experimental.MutableHashTable] = {}
        self._records: dict[tuple[str, str], dict[Hashable, int]] = {}
        self._bad_files: dict[str, str] = {}

    def variable(self, scope: str, name: str) -> tf.Variable:
        """The plain counter (scope, name), created at zero on first request (outside any trace)."""
        with self._lock:
            key = (scope, name)
            if key not in self._variables:
                with tf.init_scope():
                    self._variables[key] = tf.Variable(
                        0, dtype=tf.int64, trainable=False, name=f"count_{name}"
                    )
            return self._variables[key]

    def table(self, scope: str, name: str) -> tf.lookup.experimental.MutableHashTable:
        """The distinct-record table of (scope, name), created empty on first request."""
        with self._lock:
            key = (scope, name)
            if key not in self._tables:
                with tf.init_scope():
                    self._tables[key] = tf.lookup.experimental.MutableHashTable(
                        key_dtype=tf.int64, value_dtype=tf.int64, default_value=0
                    )
            return self._tables[key]

    def record(self, scope: str, name: str, key: Hashable, amount: int) -> None:
        """Set the amount of record `key` of counter (scope, name) from Python (idempotent)."""
        with self._lock:
            records = self._records.setdefault((scope, name), {})
            if amount:
                records[key] = int(amount)

    def note_bad_file(self, scope: str, path: str, reason: str) -> bool:
        """Count `path` once under BAD_FILES and remember why it was skipped; True the first
        time this file is noted."""
        self.record(scope, BAD_FILES, path, 1)
        with self._lock:
            new = path not in self._bad_files
            self._bad_files.setdefault(path, reason)
        return new

    def bad_files(self) -> dict[str, str]:
        """{path: reason} of every file skipped so far."""
        with self._lock:
            return dict(self._bad_files)

    def _distinct(self) -> dict[tuple[str, str], dict[Hashable, int]]:
        with self._lock:
            tables = list(self._tables.items())
            result = {key: dict(records) for key, records in self._records.items()}
        for key, table in tables:
            keys, values = table.export()
            result.setdefault(key, {}).update(zip(keys.numpy().tolist(), values.numpy().tolist()))
        return result

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Current values as {scope: {name: count}}, zero counters included."""
        with self._lock:
            plain = {key: int(var.numpy()) for key, var in self._variables.items()}
        counts = {key: sum(records.values()) for key, records in self._distinct().items()}
        result: dict[str, dict[str, int]] = {}
        for (scope, name), value in sorted({**plain, **counts}.items()):
            result.setdefault(scope, {})[name] = value
        return result

    def totals(self) -> dict[str, int]:
        """Current values over all scopes, as {name: count}: problem counters count a record
        seen by several scopes (e.g. both objectives' tasks) once; DOCUMENTS is summed."""
        with self._lock:
            totals = {name: 0 for name in PROBLEMS}
            for (_, name), var in self._variables.items():
                totals[name] = totals.get(name, 0) + int(var.numpy())
        merged: dict[str, dict[Hashable, int]] = {}
        for (_, name), records in self._distinct().items():
            union = merged.setdefault(name, {})
            for key, value in records.items():
                union[key] = max(value, union.get(key, 0))
        totals.update({name: sum(union.values()) for name, union in merged.items()})
        return totals

    def reset(self) -> None:
        """Sets every counter back to zero and forgets every record and bad file."""
        with self._lock:
            for var in self._variables.values():
                var.assign(0)
            for table in self._tables.values():
                table.remove(table.export()[0])
            self._records.clear()
            self._bad_files.clear()


COUNTERS = PipelineCounters()


class ScopedCounters:
    """The counters of one scope (task), with a graph-mode `add`."""

    def __init__(self, scope: str, registry: PipelineCounters = COUNTERS):
        self.scope = scope
        self._registry = registry

    def add(self, name: str, amount, key: tf.Tensor | None = None) -> tf.Operation:
        """Adds `amount` (a bool or integer tensor) to counter `name`; returns the update op.

        With `key` (an int64 scalar, see `record_key`) the counter counts distinct records:
        record `key` counts `amount` once, however often it is added again.
        """
        amount = tf.cast(amount, tf.int64)
        if key is None:
            var = self._registry.variable(self.scope, name)
            return var.assign_add(amount, read_value=False)
        table = self._registry.table(self.scope, name)
        positive = tf.reshape(amount > 0, [1])
        return table.insert(
            tf.boolean_mask(tf.reshape(tf.cast(key, tf.int64), [1]), positive),
            tf.boolean_mask(tf.reshape(amount, [1]), positive),
        )

    def record(self, name: str, key: Hashable, amount: int) -> None:
        """Python-side `add` with a key (for tf.numpy_function code)."""
        self._registry.record(self.scope, name, key, amount)

    def note_bad_file(self, path: str, reason: str) -> bool:
        """Count a skipped file once (BAD_FILES) and remember why; True the first time."""
        return self._registry.note_bad_file(self.scope, path, reason)

    def declare(self, *names: str) -> None:
        """Creates the named counters now (eagerly), so traced functions only capture them."""
        for name in names:
            if name == DOCUMENTS:
                self._registry.variable(self.scope, name)
            elif name in (INVALID_JSON, BAD_FILES):  # counted from Python
                self._registry.record(self.scope, name, None, 0)
            else:
                self._registry.table(self.scope, name)
