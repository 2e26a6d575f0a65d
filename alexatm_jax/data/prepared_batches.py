"""Per-host batches read by index from prepared data (`alexatm-data prepare`), numpy only.

Global row g of a split is a pure function of (seed, g, the mixture recipe, the prepared
tokens): which task, which window or document, the noise, the CLM split and the packing. A host
computes the rows of its part of global step s, rows [s B + h b, s B + (h + 1) b) for global
batch B, host h and host batch b, so
- the position is one number, the global rows consumed: a resume at step 400,000 costs what
  step 1 costs, and continues exactly;
- the global batches do not depend on how many hosts read them: a run resumes exactly on
  another number of hosts, or with another host batch.

Rows: blocks of BLOCK_ROWS consecutive rows hold an exact number of rows of each task (largest
remainder of the row rates), in a seeded order, so each task's running row count is known at
any row (`index_sampler.RowBlocks`).
- A denoising row is one example: a window of L_t - 1 tokens of its unit's documents laid end
  to end ([DOC] after each), as the streaming path packs them. Epoch e of a unit takes its
  windows in a keyed permutation, shifted by a keyed offset, so every epoch cuts and orders the
  windows anew and each window is read once per epoch.
- A CLM row packs CLM examples: the row's task first, then examples of CLM tasks drawn by rate,
  each from a document drawn uniformly (with replacement) from its unit, as long as they fit.
  The CLM row rate is set so that CLM examples make up the mixture's CLM share of examples
  (`clm_row_share`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from alexatm_jax import storage
from alexatm_jax.data import index_sampler
from alexatm_jax.data.prepared_examples import (
    Objectives,
    clm_example,
    denoising_example,
    fits,
    packed_row,
)
from alexatm_jax.data.prepared_format import UnitTokens

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
BLOCK_ROWS = 10_000
CLM_PLANNING_ROWS = 2_000  # simulated CLM rows behind the CLM row rate
MAX_DOCUMENT_DRAWS = 64  # draws to find a CLM document of >= 2 tokens before giving up
REMOTE_READ_THREADS = 16  # rows computed at once when the parts are remote (gs://)


@dataclasses.dataclass(frozen=True)
class TaskExample:
    """One example of a row, with what `alexatm-inspect`'s statistics need."""

    task: str
    objective: str
    language: str
    source: str
    inputs: np.ndarray
    targets: np.ndarray
    noise_mask: np.ndarray  # per target token, 1 = deleted from the inputs (denoise)
    clm_document_length: int = 0  # tokens of the CLM document (0 for denoise)
    clm_split_point: int = 0


def clm_row_share(clm_share: float, examples_per_clm_row: float) -> float:
    """Share of rows that are CLM rows so that CLM examples are `clm_share` of all examples,
    when a CLM row holds `examples_per_clm_row` examples on average (a denoising row one)."""
    return clm_share / (clm_share + (1.0 - clm_share) * examples_per_clm_row)


class PreparedRows:
    """Global rows of one split of prepared data: `row(g)` -> packed features, `examples(g)`.

    `recipe` is `tasks.preparation.mixture_recipe`'s JSON (tasks, rates, noise settings,
    special ids); `manifest` the prepared directory's manifest.
    """

    def __init__(
        self,
        directory: str,
        manifest: Mapping[str, Any],
        recipe: Mapping[str, Any],
        *,
        split: str,
        sequence_length: Mapping[str, int],
        seed: int,
        decoder_start_token_id: int = 0,
    ) -> None:
        self.split = split
        self.seed = int(seed)
        self.lengths = {k: int(sequence_length[k]) for k in ("inputs", "targets")}
        self.decoder_start_token_id = decoder_start_token_id
        ids = recipe["special_ids"]
        template = bool(ids.get("release_template"))
        self.objectives = Objectives(
            eos=ids["eos"],
            clm=ids["clm"],
            bos=ids["bos"] if template else None,
            space=ids["space"] if template else None,
            noise_rate=recipe["noise_rate"],
            poisson_lambda=recipe["poisson_lambda"],
            clm_split_low=recipe["clm_split_low"],
            clm_split_high=recipe["clm_split_high"],
        )
        self.tasks, self.units = self._open_units(directory, manifest, recipe["tasks"])
        # Remote parts are read by byte range, one request per window or document: rows are
        # then computed on REMOTE_READ_THREADS threads so the requests' latencies overlap.
        self._readers = (
            concurrent.futures.ThreadPoolExecutor(REMOTE_READ_THREADS, "prepared-reads")
            if storage.is_remote(directory)
            else None
        )
        self.window = self.lengths["targets"] - self.objectives.overhead("denoise")["targets"] - 1
        if (
            self.window < 1
            or self.lengths["inputs"] < 3 + self.objectives.overhead("clm")["inputs"]
        ):
            raise ValueError(f"sequence lengths {self.lengths} are too short for the objectives")
        rates = {name: task["rate"] for name, task in self.tasks.items()}
        clm_rates = {n: r for n, r in rates.items() if self.tasks[n]["objective"] == "clm"}
        denoise_rates = {n: r for n, r in rates.items() if n not in clm_rates}
        self.clm_names = sorted(clm_rates)
        total = sum(rates.values())
        self.clm_weights = np.array([clm_rates[n] for n in self.clm_names], np.float64)
        self.clm_weights /= self.clm_weights.sum() if self.clm_names else 1.0
        self.clm_share = sum(clm_rates.values()) / total
        self.examples_per_clm_row = self._plan_clm_rows() if clm_rates else 0.0
        row_share = clm_row_share(self.clm_share, self.examples_per_clm_row) if clm_rates else 0
        row_rates = {
            **{
                n: (1 - row_share) * r / sum(denoise_rates.values())
                for n, r in denoise_rates.items()
            },
            **{n: row_share * r / sum(clm_rates.values()) for n, r in clm_rates.items()},
        }
        self.blocks = index_sampler.RowBlocks(
            index_sampler.largest_remainder(row_rates, BLOCK_ROWS),
            index_sampler.key_of("blocks", self.seed, split),
        )
        self._row_key = index_sampler.key_of("row", self.seed, split)

    def _open_units(
        self, directory: str, manifest: Mapping[str, Any], tasks: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, UnitTokens]]:
        """The recipe's tasks whose unit has documents in this split, and those units opened."""
        units: dict[str, UnitTokens] = {}
        kept: dict[str, Any] = {}
        for name, task in sorted(tasks.items()):
            entry = manifest["units"].get(task["unit"])
            if entry is None:
                raise ValueError(
                    f"task {name} reads unit {task['unit']}, which the prepared data lacks "
                    f"(it has {sorted(manifest['units'])}); prepare the data again for this mixture"
                )
            split_entry = entry["splits"].get(self.split)
            if not split_entry or not split_entry["documents"]:
                continue
            if task["unit"] not in units:
                units[task["unit"]] = UnitTokens(directory, split_entry)
            kept[name] = task
        left_out = sorted(set(tasks) - set(kept))
        if left_out:
            logger.warning(
                "prepared data: no %s documents for %s; left out, rates renormalised",
                self.split,
                ", ".join(left_out),
            )
        if not kept:
            raise ValueError(f"the prepared data has no {self.split} documents for any task")
        return kept, units

    def _plan_clm_rows(self) -> float:
        """Mean CLM examples per CLM row, from simulated rows over the units' length samples."""
        rng = index_sampler.generator(index_sampler.key_of("clm-plan", self.split))
        samples = {}
        for name in self.clm_names:
            lengths = self.units[self.tasks[name]["unit"]].length_sample()
            usable = lengths[lengths >= 2]  # CLM needs documents of >= 2 tokens
            samples[name] = usable if usable.size else np.array([2])
        counts = []
        for _ in range(CLM_PLANNING_ROWS):
            used = {"inputs": 0, "targets": 0}
            count = 0
            while True:
                name = self.clm_names[rng.choice(len(self.clm_names), p=self.clm_weights)]
                m = int(rng.choice(samples[name]))
                example = clm_example(np.zeros(m, np.int32), rng, self.objectives, self.lengths)[:2]
                if count and not fits(used, example, self.lengths):
                    break
                used = {
                    "inputs": used["inputs"] + example[0].size,
                    "targets": used["targets"] + example[1].size,
                }
                count += 1
            counts.append(count)
        return float(np.mean(counts))

    def examples(self, row: int) -> list[TaskExample]:
        """The examples packed into global row `row`, in order."""
        name, count = self.blocks.locate(row)
        rng = index_sampler.generator(self._row_key, row)
        if self.tasks[name]["objective"] == "denoise":
            inputs, targets, noise = denoising_example(
                self._window(name, count), rng, self.objectives
            )
            return [self._example(name, inputs, targets, noise)]
        examples: list[TaskExample] = []
        used = {"inputs": 0, "targets": 0}
        while True:
            if examples:
                name = self.clm_names[rng.choice(len(self.clm_names), p=self.clm_weights)]
            document = self._clm_document(name, rng)
            inputs, targets, split = clm_example(document, rng, self.objectives, self.lengths)
            if examples and not fits(used, (inputs, targets), self.lengths):
                return examples
            noise = np.zeros(targets.size, np.int32)
            examples.append(self._example(name, inputs, targets, noise, document.size, split))
            used = {
                "inputs": used["inputs"] + inputs.size,
                "targets": used["targets"] + targets.size,
            }

    def row(self, row: int) -> dict[str, np.ndarray]:
        """Global row `row` as packed EncDec features (int32 [L] each)."""
        examples = [(ex.inputs, ex.targets) for ex in self.examples(row)]
        return packed_row(examples, self.lengths, self.decoder_start_token_id)

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Rows [start, start + count) stacked: int32 [count, L] per training feature."""
        indices = range(start, start + count)
        rows = list(
            self._readers.map(self.row, indices) if self._readers else map(self.row, indices)
        )
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def _example(self, name: str, *arrays_and_split: Any) -> TaskExample:
        task = self.tasks[name]
        return TaskExample(
            name, task["objective"], task["language"], task["source"], *arrays_and_split
        )

    def _window(self, name: str, count: int) -> np.ndarray:
        """The `count`-th denoising window of task `name` (epochs cycle through the unit)."""
        unit_name = self.tasks[name]["unit"]
        unit = self.units[unit_name]
        per_epoch = max(1, unit.num_tokens // self.window)
        epoch, index = divmod(count, per_epoch)
        key = index_sampler.key_of("windows", self.seed, self.split, unit_name, epoch)
        offset = index_sampler.generator(key).integers(self.window)
        start = (
            offset + index_sampler.permute(index, per_epoch, key) * self.window
        ) % unit.num_tokens
        pieces, left = [], self.window
        while left:  # the unit read as a cycle: a window may run past its end into its start
            take = min(left, unit.num_tokens - start)
            pieces.append(unit.window(start, take))
            left, start = left - take, 0
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _clm_document(self, name: str, rng: np.random.Generator) -> np.ndarray:
        """A uniformly drawn document of >= 2 tokens of task `name`'s unit."""
        unit = self.units[self.tasks[name]["unit"]]
        for _ in range(MAX_DOCUMENT_DRAWS):
            document = unit.document(int(rng.integers(unit.num_documents)))
            if document.size >= 2:
                return document
        raise ValueError(
            f"{MAX_DOCUMENT_DRAWS} documents drawn from unit {self.tasks[name]['unit']} "
            f"({self.split}) all had fewer than 2 tokens: it cannot feed CLM examples"
        )


class PreparedHostBatches:
    """This process's batches of prepared rows: `HostBatchSource` for the trainer.

    Global step s is rows [s B, (s + 1) B) with B = per_host_batch_size x num_shards; this
    process reads rows [s B + shard_index b, s B + (shard_index + 1) b). Batches are computed
    `prefetch` steps ahead on a background thread.
    """

    def __init__(
        self,
        rows: PreparedRows,
        *,
        shard_index: int,
        num_shards: int,
        per_host_batch_size: int,
        preparation_digest: str,
        report: tuple[dict[str, int], dict[str, str]] = ({}, {}),
        resume_state: Mapping[str, Any] | None = None,
        prefetch: int = 2,
    ) -> None:
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
        self.rows = rows
        self.shard_index = shard_index
        self.per_host_batch_size = per_host_batch_size
        self.global_batch_size = per_host_batch_size * num_shards
        self.identity = {
            "split": rows.split,
            "seed": rows.seed,
            "sequence_length": dict(rows.lengths),
            "preparation_digest": preparation_digest,
        }
        self._report = report
        self.rows_consumed = self._resume(resume_state) if resume_state else 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "prepared-batches")
        self._pending: deque[concurrent.futures.Future] = deque()
        self._next_start = self.rows_consumed
        self._prefetch = max(1, prefetch)

    def _resume(self, state: Mapping[str, Any]) -> int:
        if state.get("source") == "prepared" and state.get("format") == STATE_FORMAT:
            if state.get("stream") != self.identity:
                logger.warning(
                    "the prepared stream changed since the checkpoint (saved %s, now %s): rows "
                    "from %d on are not the ones the run would have read",
                    state.get("stream"),
                    self.identity,
                    state["rows_consumed"],
                )
            return int(state["rows_consumed"])
        if state.get("source") == "seqio":
            rows = int(state["examples_consumed"]) * int(state["stream"]["num_shards"])
            logger.warning(
                "resuming a streaming (SeqIO) run on prepared data: continuing at prepared row "
                "%d, a different data order from here on",
                rows,
            )
            return rows
        raise ValueError(f"cannot resume prepared data from data state {dict(state)}")

    def _compute(self, start: int) -> dict[str, np.ndarray]:
        return self.rows.rows(
            start + self.shard_index * self.per_host_batch_size, self.per_host_batch_size
        )

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next `[per_host_batch_size, length]` int32 arrays, by feature name."""
        while len(self._pending) < self._prefetch:
            self._pending.append(self._executor.submit(self._compute, self._next_start))
            self._next_start += self.global_batch_size
        batch = self._pending.popleft().result()
        self.rows_consumed += self.global_batch_size
        return batch

    def state(self) -> dict[str, Any]:
        """JSON: the global rows consumed, and what they were rows of."""
        return {
            "source": "prepared",
            "format": STATE_FORMAT,
            "rows_consumed": self.rows_consumed,
            "stream": dict(self.identity),
        }

    def pipeline_report(self) -> tuple[dict[str, int], dict[str, str]]:
        """The prepare step's counters and the files it skipped (from the manifest)."""
        return self._report


def checked_preparation(
    directory: str, mixture: str, vocab_path: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, recipe) of prepared data that matches the current registry (gin's
    MixtureConfig, `vocab_path` if given) and vocabulary; ValueError naming what differs
    otherwise (see tasks.preparation.check_prepared)."""
    import tasks  # TensorFlow/SeqIO: the registry defines what the prepared data must match

    config = tasks.MixtureConfig()
    if vocab_path:
        config = dataclasses.replace(config, vocab_path=vocab_path)
    return _checked(directory, mixture, config)


@functools.lru_cache(maxsize=4)
def _checked(directory: str, mixture: str, config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """check_prepared, once per (directory, mixture, settings) in a process (a run opens the
    training and evaluation splits, every evaluation again)."""
    from tasks import preparation

    return preparation.check_prepared(directory, mixture, config)


def open_prepared_rows(
    directory: str,
    *,
    mixture: str,
    vocab_path: str | None,
    split: str,
    sequence_length: Mapping[str, int],
    seed: int,
    decoder_start_token_id: int,
) -> tuple[PreparedRows, str, tuple[dict[str, int], dict[str, str]]]:
    """(the split's rows, the preparation digest, the prepare step's (counters, bad files)) of
    the prepared data in `directory`, checked against the registry first."""
    manifest, recipe = checked_preparation(directory, mixture, vocab_path)
    rows = PreparedRows(
        directory,
        manifest,
        recipe,
        split=split,
        sequence_length=sequence_length,
        seed=seed,
        decoder_start_token_id=decoder_start_token_id,
    )
    report = (dict(manifest.get("counters", {})), dict(manifest.get("bad_files", {})))
    return rows, manifest["preparation_digest"], report
