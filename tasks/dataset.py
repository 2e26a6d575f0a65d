"""The one entry point the trainer needs: a deterministic tf.data.Dataset of EncDec features."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import seqio
import tensorflow as tf

from tasks import pretraining, seq2seq

DEFAULT_LENGTHS = {"inputs": 1024, "targets": 1024}
MODEL_FEATURES = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "encoder_positions",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def unpacked_model_features(
    ds: tf.data.Dataset, lengths: Mapping[str, int], decoder_start_id: int
) -> tf.data.Dataset:
    """One example per row, as the packed converter lays out a row holding one example: the
    tokens and loss weights of `seqio.EncDecFeatureConverter(pack=False)`, plus segment ids (1
    on the example's tokens, 0 on padding) and positions. SeqIO's unpacked converter emits
    neither, and a model that marks padding by segment id would then attend to the padding.
    Both come from the trimmed lengths, never from token ids. Decoder inputs equal SeqIO's on
    the real positions (on padding they are the packed converter's)."""

    def with_row_features(ex):
        out = {}
        for name in ("inputs", "targets"):
            tokens = ex[name]
            out[name] = tokens
            out[f"{name}_segment_ids"] = tf.ones_like(tokens)
            out[f"{name}_positions"] = tf.range(tf.size(tokens), dtype=tokens.dtype)
        return out

    padded_lengths = {
        f"{name}{suffix}": int(lengths[name])
        for name in ("inputs", "targets")
        for suffix in ("", "_segment_ids", "_positions")
    }
    ds = seqio.utils.trim_and_pad_dataset(ds.map(with_row_features), padded_lengths)

    def to_model_features(ex):
        targets = ex["targets"]
        return {
            "encoder_input_tokens": ex["inputs"],
            "encoder_segment_ids": ex["inputs_segment_ids"],
            "encoder_positions": ex["inputs_positions"],
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
                targets, sequence_id=ex["targets_segment_ids"], bos_id=decoder_start_id
            ),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": seqio.non_padding_position(targets) * ex["targets_segment_ids"],
            "decoder_segment_ids": ex["targets_segment_ids"],
            "decoder_positions": ex["targets_positions"],
        }

    return ds.map(to_model_features, num_parallel_calls=tf.data.AUTOTUNE)


def _is_local(name: str) -> bool:
    return name == pretraining.LOCAL_MIXTURE or name.startswith("alexatm_local_")


def register_for(
    name: str, *, data_dir: str | None = None, config: pretraining.MixtureConfig | None = None
) -> seqio.DatasetProviderBase:
    """(Re)registers what `name` needs (local or TFDS mixture, the gin-bound seq2seq task and
    what it mixes with) and returns its seqio provider."""
    config = config or pretraining.MixtureConfig()
    task = seq2seq.Seq2SeqTask()
    needed = {name, *task.mix_with} if task.data else {name}
    if any(map(_is_local, needed)):
        pretraining.register_local_mixture(
            **({"data_dir": data_dir} if data_dir else {}), config=config
        )
    if any(n.startswith("alexatm_") and not _is_local(n) for n in needed):
        pretraining.register_pretrain_mixture(config)
    if task.data:
        seq2seq.register_seq2seq_task(task, config.vocab_path)
    return seqio.get_mixture_or_task(name)


def get_dataset(
    mixture_or_task_name: str,
    *,
    sequence_length: Mapping[str, int] | None = None,
    split: str = "train",
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    data_dir: str | None = None,
    vocab_path: str | None = None,
    pack: bool = True,
    feature_converter: bool = True,
    shuffle: bool | None = None,
    num_epochs: int | None = -1,
    decoder_start_id: int = 0,
    config: pretraining.MixtureConfig | None = None,
) -> tf.data.Dataset:
    """Examples of a pretraining mixture or task, deterministic for (seed, shard_index, num_shards).

    sequence_length: {"inputs": L_in, "targets": L_t} in tokens (default 1024 each).
    split: "train" or "validation" (held-out documents, see
        docs/data.md#determinism-shards-validation).
    seed: one integer for every host; the shard index is folded into per-example randomness.
    data_dir: DATA_DIR of the local mixture (else gin / $ALEXATM_DATA_DIR).
    vocab_path: SentencePiece model (else MixtureConfig.vocab_path / $ALEXATM_VOCAB / demo).
    shuffle: default True for train, False otherwise. num_epochs: default (-1) repeats train
      forever and reads other splits once; None repeats forever.
    feature_converter: True -> EncDec model features (MODEL_FEATURES, int32 [L], packed when
      `pack`); False -> task features "inputs"/"targets" (+ the descriptive INFO_FEATURES).
    decoder_start_id: first decoder input id (0 for our vocabularies; the released model's
      decoder_start_token_id otherwise).
    """
    lengths = dict(sequence_length or DEFAULT_LENGTHS)
    config = config or pretraining.MixtureConfig()
    if vocab_path:
        config = dataclasses.replace(config, vocab_path=vocab_path)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
    provider = register_for(mixture_or_task_name, data_dir=data_dir, config=config)
    shuffle = split == "train" if shuffle is None else shuffle
    if num_epochs == -1:
        num_epochs = None if split == "train" else 1
    kwargs = dict(
        split=split,
        shuffle=shuffle,
        seed=seed,
        num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
    )
    if isinstance(provider, seqio.Mixture) and not feature_converter:
        kwargs["passthrough_features"] = list(pretraining.INFO_FEATURES)
    ds = provider.get_dataset(lengths, **kwargs)
    if feature_converter:
        ds = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
        if pack:
            converter = seqio.EncDecFeatureConverter(pack=True, bos_id=decoder_start_id)
            ds = converter(ds, task_feature_lengths=lengths)
        else:
            ds = unpacked_model_features(ds, lengths, decoder_start_id)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)
