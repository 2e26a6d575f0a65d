"""SeqIO data sources of raw documents: local files, Wikipedia and mC4 through TFDS.

Every source yields {"text": tf.string, "rng": int64 [seed, shard index]}, plus the marker
`SHUFFLE_FEATURE` (tf.bool, True) when the caller asked for shuffling: the seeded preprocessors
derive per-example seeds from `rng` (tasks/preprocessors/seeds.py), so shards draw different noise
under one seed, and the document shuffle permutes only marked streams (an unmarked stream passes
through without waiting for a window of documents). Local sources shuffle nothing themselves
beyond the file order (chosen in Python when the dataset is built): every random choice in the
stream is stateless, so iterating the same dataset twice gives the same examples (TFDS sources:
up to TFDS's own file shuffling). Sources without a native validation split (local files,
Wikipedia) assign a fixed share of documents to `validation` by a keyed hash of the document text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.counters import ScopedCounters
from tasks.file_readers import read_documents
from tasks.preprocessors.documents import SHUFFLE_FEATURE
from tasks.preprocessors.seeds import source_rng

SPLITS = ("train", "validation")
_SPLIT_HASH_KEY = [0x5EED5A17, 0xA1E7A7]  # SipHash key of the train/validation decision


def is_validation(text: tf.Tensor, validation_per_mille: int) -> tf.Tensor:
    """True for documents in the validation split: a keyed hash of the text, bucket < per mille."""
    bucket = tf.strings.to_hash_bucket_strong(text, 1000, key=_SPLIT_HASH_KEY)
    return bucket < validation_per_mille


def _hash_split(ds: tf.data.Dataset, split: str, validation_per_mille: int) -> tf.data.Dataset:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    want_validation = split == "validation"

    @tf.autograph.experimental.do_not_convert
    def keep(ex):
        return tf.equal(is_validation(ex["text"], validation_per_mille), want_validation)

    return ds.filter(keep)


def _with_rng(
    ds: tf.data.Dataset, seed: int | None, shard_index: int, shuffle: bool
) -> tf.data.Dataset:
    """Texts -> {"text", "rng"}, plus the `SHUFFLE_FEATURE` marker when `shuffle`."""
    rng = source_rng(seed, shard_index)
    marker = {SHUFFLE_FEATURE: tf.constant(True)} if shuffle else {}
    return ds.map(
        tf.autograph.experimental.do_not_convert(lambda text: {"text": text, "rng": rng, **marker})
    )


class LocalTextSource(seqio.DataSource):
    """Documents of one language from local txt/jsonl(.gz) files.

    Sharding: by file when there are at least as many files as shards, otherwise by document
    (every shard reads all files in sorted order and keeps every n-th document). With `shuffle`,
    the shard's file order is shuffled with `seed`.
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        name: str,
        max_document_bytes: int,
        validation_per_mille: int,
    ):
        if not files:
            raise ValueError(f"source {name}: no files")
        self._files = sorted(files)
        self._name = name
        self._max_document_bytes = max_document_bytes
        self._validation_per_mille = validation_per_mille
        super().__init__(splits=SPLITS)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    @property
    def performs_internal_shuffling(self) -> bool:
        return True  # documents are shuffled by the tasks' stateless document shuffle

    def list_shards(self, split: str) -> Sequence[str]:
        return list(self._files)

    def __repr__(self) -> str:
        return f"LocalTextSource({self._name}, {len(self._files)} files)"

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # handled by the Task
        files = list(self._files)
        num_shards = shard_info.num_shards if shard_info else 1
        index = shard_info.index if shard_info else 0
        by_file = len(files) >= num_shards
        if by_file:
            files = files[index::num_shards]
            if shuffle:
                np.random.default_rng(seed).shuffle(files)
        ds = read_documents(files, ScopedCounters(self._name), self._max_document_bytes)
        if not by_file:
            ds = ds.shard(num_shards, index)
        return _hash_split(_with_rng(ds, seed, index, shuffle), split, self._validation_per_mille)


class TfdsTextSource(seqio.DataSource):
    """The `text` feature of a TFDS dataset (Wikipedia, mC4), with our train/validation splits.

    `split_map` maps our split names to TFDS split names. With `hash_validation_per_mille` set,
    both our splits read the single TFDS split `split_map["train"]` and are separated by the text
    hash, as for local files (Wikipedia has only a train split).
    """

    def __init__(
        self,
        tfds_name: str,
        split_map: Mapping[str, str],
        *,
        tfds_data_dir: str | None = None,
        hash_validation_per_mille: int | None = None,
    ):
        self._hash_validation = hash_validation_per_mille
        tfds_splits = (
            {"train": split_map["train"]} if hash_validation_per_mille else dict(split_map)
        )
        self._tfds = seqio.TfdsDataSource(
            tfds_name, tfds_data_dir=tfds_data_dir, splits=tfds_splits, read_only=True
        )
        super().__init__(splits=SPLITS)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    @property
    def performs_internal_shuffling(self) -> bool:
        return True  # TFDS shuffles files; the tasks shuffle documents statelessly

    def _tfds_split(self, split: str) -> str:
        return "train" if self._hash_validation else split

    def list_shards(self, split: str) -> Sequence[str]:
        return self._tfds.list_shards(self._tfds_split(split))

    def __repr__(self) -> str:
        return f"TfdsTextSource({self._tfds.tfds_dataset.name})"

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs
        tfds_split = self._tfds_split(split)
        index = shard_info.index if shard_info else 0
        try:
            if shard_info and shard_info.num_shards > 1:
                if len(self.list_shards(split)) >= shard_info.num_shards:
                    ds = self._tfds.get_dataset(tfds_split, shuffle, seed, shard_info)
                else:  # same seed on every shard: the same order, so the shards are disjoint
                    ds = self._tfds.get_dataset(tfds_split, shuffle, seed)
                    ds = ds.shard(shard_info.num_shards, index)
            else:
                ds = self._tfds.get_dataset(tfds_split, shuffle, seed)
        except (AssertionError, tfds.core.DatasetNotFoundError) as e:
            name = self._tfds.tfds_dataset.name
            raise ValueError(
                f"TFDS dataset {name} is not available ({e}). Prepare it once with "
                f"`tfds build {name.split(':')[0]}` (see docs/data.md#preparing-the-tfds-data) "
                "and point TFDS_DATA_DIR or MixtureConfig.tfds_data_dir at it, or "
                "train on local files with alexatm_pretrain_local."
            ) from e
        text = ds.map(tf.autograph.experimental.do_not_convert(lambda ex: ex["text"]))
        ds = _with_rng(text, seed, index, shuffle)
        if self._hash_validation:
            ds = _hash_split(ds, split, self._hash_validation)
        return ds
