"""Examples of a mixture as Python records, and the statistics `alexatm-inspect --stats` reports."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks.preprocessors.denoising import expected_draw_mean


@dataclasses.dataclass(frozen=True)
class ExampleRecord:
    """One task example before feature conversion (token ids exactly as the model gets them)."""

    objective: str  # "denoise" or "clm"
    language: str
    source: str
    inputs: list[int]
    targets: list[int]
    noise_mask: list[int]  # per target token, 1 = deleted from the inputs (denoise only)
    clm_document_length: int  # tokens of the CLM document (0 for denoise)
    clm_split_point: int  # CLM split index into the document (0 for denoise)

    @property
    def deleted_spans(self) -> list[tuple[int, int]]:
        """(start, length) of each deleted run, in target positions."""
        return runs_of_ones(self.noise_mask)


def collect_examples(ds: tf.data.Dataset, count: int) -> list[ExampleRecord]:
    """The first `count` examples of a dataset of task features plus the info features."""
    records = []
    for ex in ds.take(count).as_numpy_iterator():
        records.append(
            ExampleRecord(
                objective=ex["objective"].decode(),
                language=ex["language"].decode(),
                source=ex["source"].decode(),
                inputs=ex["inputs"].tolist(),
                targets=ex["targets"].tolist(),
                noise_mask=ex["noise_mask"].tolist(),
                clm_document_length=int(ex["clm_document_length"]),
                clm_split_point=int(ex["clm_split_point"]),
            )
        )
    return records


def runs_of_ones(mask: Sequence[int]) -> list[tuple[int, int]]:
    """(start, length) of every maximal run of non-zero values in `mask`."""
    runs, start = [], None
    for i, value in enumerate(list(mask) + [0]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def is_subsequence(short: Sequence[int], long: Sequence[int]) -> bool:
    """Whether `short` is `long` with some elements removed (order kept)."""
    it = iter(long)
    return all(any(x == y for y in it) for x in short)


def rule_mean_span_length(
    target_lengths: Iterable[int],
    rate: float,
    poisson_lambda: float,
    draws: int = 2000,
    seed: int = 0,
) -> float:
    """Expected pooled mean deleted-span length (total deleted / number of spans) that the
    deletion rule of tasks/preprocessors/denoising.py gives for these target lengths, by
    simulation with `draws` sequences per distinct length."""
    rng = np.random.default_rng(seed)
    deleted = spans = 0.0
    for length, count in Counter(target_lengths).items():
        body = length - 1
        for _ in range(draws):
            k = min(math.floor(rate * length + rng.random()), max(body - 1, 0))
            total = 0
            while total < k:
                span = 0
                while span == 0:
                    span = int(rng.poisson(poisson_lambda))
                total += span
                spans += count / draws
            deleted += k * count / draws
    return deleted / spans if spans else float("nan")


def padding_shares(
    records: Sequence[ExampleRecord], lengths: Mapping[str, int]
) -> dict[str, float]:
    """Share of padding in decoder targets and encoder inputs, unpacked and after SeqIO packing."""

    def generator():
        for r in records:
            yield {"inputs": r.inputs, "targets": r.targets}

    spec = {k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")}
    shares = {}
    for pack in (False, True):
        ds = tf.data.Dataset.from_generator(generator, output_signature=spec)
        ds = seqio.EncDecFeatureConverter(pack=pack)(ds, task_feature_lengths=dict(lengths))
        rows = real_targets = real_inputs = 0
        for ex in ds.as_numpy_iterator():
            rows += 1
            real_targets += (
                int((ex["decoder_segment_ids"] > 0).sum())
                if pack
                else int((ex["decoder_target_tokens"] > 0).sum())
            )
            real_inputs += (
                int((ex["encoder_segment_ids"] > 0).sum())
                if pack
                else int((ex["encoder_input_tokens"] > 0).sum())
            )
        name = "packed" if pack else "unpacked"
        shares[f"{name}_rows"] = rows
        shares[f"{name}_targets"] = 1 - real_targets / max(rows * lengths["targets"], 1)
        shares[f"{name}_inputs"] = 1 - real_inputs / max(rows * lengths["inputs"], 1)
    return shares


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def summarize(
    records: Sequence[ExampleRecord],
    *,
    clm_id: int,
    lengths: Mapping[str, int],
    intended_languages: Mapping[str, float],
    intended_clm_share: float,
    rate: float,
    poisson_lambda: float,
) -> dict:
    """Realised statistics of `records` next to what the mixture intends (JSON-ready dict)."""
    denoise = [r for r in records if r.objective == "denoise"]
    clm = [r for r in records if r.objective == "clm"]
    spans = [length for r in denoise for _, length in r.deleted_spans]
    deleted = sum(len(r.targets) - len(r.inputs) for r in denoise)
    target_tokens = sum(len(r.targets) for r in denoise)
    fractions = [r.clm_split_point / r.clm_document_length for r in clm]
    histogram = np.histogram(fractions, bins=10, range=(0.0, 1.0))[0].tolist() if clm else []
    language_counts = Counter(r.language for r in records)
    n = max(len(records), 1)
    return {
        "examples": len(records),
        "clm_share": len(clm) / n,
        "clm_share_intended": intended_clm_share,
        "denoise": {
            "examples": len(denoise),
            "deletion_rate": deleted / max(target_tokens, 1),
            "deletion_rate_intended": rate,
            "deleted_spans": len(spans),
            "mean_deleted_span_length": _mean(spans),
            "mean_deleted_span_length_rule": rule_mean_span_length(
                [len(r.targets) for r in denoise], rate, poisson_lambda
            )
            if denoise
            else float("nan"),
            "poisson_draw_mean": expected_draw_mean(poisson_lambda),
            "inputs_not_subsequence_of_targets": sum(
                not is_subsequence(r.inputs, r.targets) for r in denoise
            ),
            "inputs_containing_clm": sum(clm_id in r.inputs for r in denoise),
            "mean_input_tokens": _mean([len(r.inputs) for r in denoise]),
            "mean_target_tokens": _mean([len(r.targets) for r in denoise]),
        },
        "clm": {
            "examples": len(clm),
            # [CLM] first, or after `<s> ▁` with the released tokenizer's template.
            "inputs_not_starting_with_clm": sum(
                clm_id not in r.inputs[:1] + r.inputs[2:3] for r in clm
            ),
            "split_fraction_mean": _mean(fractions),
            "split_fraction_min": min(fractions, default=float("nan")),
            "split_fraction_max": max(fractions, default=float("nan")),
            "split_fraction_deciles": histogram,
            "mean_document_tokens": _mean([r.clm_document_length for r in clm]),
            "mean_input_tokens": _mean([len(r.inputs) for r in clm]),
            "mean_target_tokens": _mean([len(r.targets) for r in clm]),
        },
        "languages": {
            code: {"share": language_counts.get(code, 0) / n, "intended": share}
            for code, share in intended_languages.items()
        },
        "sources": {k: v / n for k, v in sorted(Counter(r.source for r in records).items())},
        "padding": padding_shares(records, lengths),
    }
