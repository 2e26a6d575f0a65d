"""Counters of skipped and repaired input, updated from inside tf.data functions.

Each counter is an int64 tf.Variable keyed by (scope, name), where the scope is normally a task
name. Preprocessors create their counters eagerly when the pipeline is built and add to them in
graph mode; `snapshot()` reads them at any time (e.g. at the end of a run, or from
`alexatm-inspect`). Counts cover what the input pipeline has processed, which runs ahead of what
the consumer has taken by the prefetch depth.
"""

from __future__ import annotations

import threading

import tensorflow as tf

# Counter names, one per kind of event (documented in README.md, "Pretraining data").
DOCUMENTS = "documents"  # records that reached the cleaning step
EMPTY = "empty_documents"  # empty or whitespace-only records, dropped
INVALID_UTF8 = "invalid_utf8_documents"  # records with invalid UTF-8, bytes replaced by U+FFFD
INVALID_JSON = "invalid_jsonl_records"  # jsonl lines that are not an object with a string `text`
SPLIT_LONG = "long_documents_split"  # documents longer than the limit, cut into pieces
CONTAMINATED = "decontaminated_documents"  # documents sharing a 13-gram with a benchmark, dropped
SPECIAL_PIECES = "special_pieces_removed"  # [CLM]/[DOC] ids produced from raw text, removed
CLM_TOO_SHORT = "clm_documents_too_short"  # documents under 2 tokens, unusable for CLM


class PipelineCounters:
    """A thread-safe registry of int64 tf.Variable counters keyed by (scope, name)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._variables: dict[tuple[str, str], tf.Variable] = {}

    def variable(self, scope: str, name: str) -> tf.Variable:
        """The counter (scope, name), created at zero on first request (outside any trace)."""
        with self._lock:
            key = (scope, name)
            if key not in self._variables:
                with tf.init_scope():
                    self._variables[key] = tf.Variable(
                        0, dtype=tf.int64, trainable=False, name=f"count_{name}"
                    )
            return self._variables[key]

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Current values as {scope: {name: count}}, zero counters included."""
        with self._lock:
            items = list(self._variables.items())
        result: dict[str, dict[str, int]] = {}
        for (scope, name), var in sorted(items):
            result.setdefault(scope, {})[name] = int(var.numpy())
        return result

    def totals(self) -> dict[str, int]:
        """Current values summed over scopes, as {name: count}."""
        totals: dict[str, int] = {}
        for counts in self.snapshot().values():
            for name, value in counts.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def reset(self) -> None:
        """Sets every counter back to zero."""
        with self._lock:
            for var in self._variables.values():
                var.assign(0)


COUNTERS = PipelineCounters()


class ScopedCounters:
    """The counters of one scope (task), with a graph-mode `add`."""

    def __init__(self, scope: str, registry: PipelineCounters = COUNTERS):
        self.scope = scope
        self._registry = registry

    def add(self, name: str, amount) -> tf.Operation:
        """Adds `amount` (a bool or integer tensor) to counter `name`; returns the update op."""
        var = self._registry.variable(self.scope, name)
        return var.assign_add(tf.cast(amount, tf.int64), read_value=False)

    def declare(self, *names: str) -> None:
        """Creates the named counters now (eagerly), so traced functions only capture them."""
        for name in names:
            self._registry.variable(self.scope, name)
