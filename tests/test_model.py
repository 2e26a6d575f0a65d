"""Model behaviour that needs no reference: packing, scan layout, logical axes, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from random_params import random_params
from tiny_config import tiny_model_config

from alexatm_jax.model import AlexaTM, ModelConfig, param_logical_axes, param_shapes
from alexatm_jax.model.layout import (
    convert_layout,
    is_scanned,
    scan_params,
    split_layer_path,
    unscan_params,
)

CONFIG = tiny_model_config(
    vocab_size=50,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_encoder_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=40,
    type_vocab_size=2,
    dropout_rate=0.1,
)
DOCUMENTED_AXES = {"vocab", "embed", "mlp", "heads", "kv", "layers", "position", "type_vocab"}
# (encoder length, decoder length) of each example; packed two and three to a row.
EXAMPLE_LENGTHS = [(5, 4), (7, 3), (3, 2), (4, 5), (6, 3)]
ROWS = [[0, 1], [2, 3, 4]]
ENC_WIDTH, DEC_WIDTH = 16, 12


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(jnp.asarray, random_params(CONFIG, seed=0, scale=0.3))


@pytest.fixture(scope="module")
def apply_fn():
    """Jitted logits for CONFIG (shared by every test, compiled once per batch shape)."""
    return jax.jit(lambda p, inputs: AlexaTM(CONFIG).apply({"params": p}, **inputs))


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(1)
    return [
        (rng.integers(2, CONFIG.vocab_size, e), rng.integers(2, CONFIG.vocab_size, d))
        for e, d in EXAMPLE_LENGTHS
    ]


def pack(examples, rows, enc_width, dec_width):
    """T5X packed features: segment ids 1..k per row (0 = padding), positions per segment."""
    batch = {
        name: np.zeros((len(rows), width), np.int32)
        for name, width in [
            ("encoder_input_tokens", enc_width),
            ("encoder_segment_ids", enc_width),
            ("encoder_positions", enc_width),
            ("decoder_input_tokens", dec_width),
            ("decoder_segment_ids", dec_width),
            ("decoder_positions", dec_width),
        ]
    }
    for r, members in enumerate(rows):
        offsets = {"encoder": 0, "decoder": 0}
        for segment, index in enumerate(members, start=1):
            for side, tokens in zip(("encoder", "decoder"), examples[index]):
                start, n = offsets[side], len(tokens)
                batch[f"{side}_input_tokens"][r, start : start + n] = tokens
                batch[f"{side}_segment_ids"][r, start : start + n] = segment
                batch[f"{side}_positions"][r, start : start + n] = np.arange(n)
                offsets[side] += n
    return batch


def test_packed_batch_equals_examples_run_one_by_one(params, apply_fn, examples):
    packed = np.asarray(apply_fn(params, pack(examples, ROWS, ENC_WIDTH, DEC_WIDTH)))
    alone = np.asarray(apply_fn(params, pack(examples, [[i] for i in range(len(examples))], 8, 6)))
    compared = 0
    for r, members in enumerate(ROWS):
        start = 0
        for index in members:
            n = EXAMPLE_LENGTHS[index][1]
            np.testing.assert_allclose(
                packed[r, start : start + n], alone[index, :n], atol=1e-5, rtol=0
            )
            start += n
            compared += n
    assert compared == sum(d for _, d in EXAMPLE_LENGTHS)
    assert np.abs(alone).max() > 0.5


def test_scan_layers_on_and_off_give_the_same_logits(params, apply_fn, examples):
    batch = pack(examples, ROWS, ENC_WIDTH, DEC_WIDTH)
    scanned_config = CONFIG.replace(scan_layers=True)
    scanned = jax.jit(lambda p, inputs: AlexaTM(scanned_config).apply({"params": p}, **inputs))
    np.testing.assert_allclose(
        np.asarray(scanned(scan_params(params), batch)),
        np.asarray(apply_fn(params, batch)),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_documented_logical_axes(scan):
    config = CONFIG.replace(scan_layers=scan)
    axes = traverse_util.flatten_dict(param_logical_axes(config))
    shapes = traverse_util.flatten_dict(param_shapes(config))
    assert axes.keys() == shapes.keys()
    for path, spec in axes.items():
        assert len(spec) == len(shapes[path].shape), path
        assert set(spec) <= DOCUMENTED_AXES, (path, spec)
        assert (spec[0] == "layers") == (scan and path[1:2] == ("layers",)), (path, spec)


def test_layout_round_trips_numpy_and_jax(params):
    numpy_params = jax.tree.map(np.asarray, params)
    for tree in (numpy_params, params):
        scanned = scan_params(tree)
        assert is_scanned(scanned) and not is_scanned(tree)
        assert scanned["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape == (2, 32, 48)
        back = unscan_params(scanned)
        assert jax.tree.structure(back) == jax.tree.structure(tree)
        assert all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree))
        )
    assert isinstance(jax.tree.leaves(scan_params(numpy_params))[0], np.ndarray)
    assert convert_layout(numpy_params, False) is numpy_params


def test_consuming_layout_conversion_empties_the_source():
    tree = random_params(CONFIG, seed=2)
    scanned = scan_params(tree, consume=True)
    assert set(tree["encoder"]) == {
        "layers",
        "position_embedder",
        "token_type_embedder",
        "final_norm",
    }
    assert unscan_params(scanned, consume=True)["decoder"]["layers_1"]["mlp"]["wo"][
        "bias"
    ].shape == (32,)
    assert "layers" not in scanned["decoder"]


def test_split_layer_path():
    assert split_layer_path(("encoder", "layers_12", "mlp", "wi", "kernel")) == (
        ("encoder", "layers", "mlp", "wi", "kernel"),
        12,
    )
    assert split_layer_path(("token_embedder", "embedding")) == (
        ("token_embedder", "embedding"),
        None,
    )


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(d_model=30, num_encoder_heads=4), "not divisible by 4 heads"),
        (dict(num_decoder_layers=0), "num_decoder_layers must be >= 1"),
        (dict(activation="swish"), "activation must be one of"),
        (dict(remat_policy="most"), "remat_policy must be one of"),
        (dict(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\)"),
        (
            dict(attention_impl="dot_product", attention_dropout_rate=0.1),
            "no attention-probability",
        ),
    ],
)
def test_bad_configs_raise_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_unknown_config_fields_are_named():
    with pytest.raises(ValueError, match=r"Unknown ModelConfig fields \['d_modle'\]"):
        ModelConfig.from_dict({"d_modle": 3})
