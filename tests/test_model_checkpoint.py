"""The model checkpoint format and `alexatm_jax.load`'s directory dispatch."""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec
from random_params import random_params
from tiny_config import tiny_model_config

import alexatm_jax
from alexatm_jax import api
from alexatm_jax.checkpoints import (
    MARKER_FILE,
    read_checkpoint_info,
    restore_model_checkpoint,
    save_model_checkpoint,
)
from alexatm_jax.model import ModelConfig, param_shapes
from alexatm_jax.model.layout import is_scanned, unscan_params

CONFIG = tiny_model_config(
    vocab_size=40,
    d_model=16,
    num_encoder_layers=2,
    num_decoder_layers=2,
    encoder_ffn_dim=24,
    decoder_ffn_dim=24,
    max_positions=8,
    dropout_rate=0.1,
    scan_layers=True,
)


@pytest.fixture(scope="module")
def scanned_checkpoint(tmp_path_factory):
    """A scanned float32 checkpoint with a tokenizer file, and its params."""
    root = tmp_path_factory.mktemp("ckpt")
    params = random_params(CONFIG, seed=0)
    (root / "spm.model").write_bytes(b"spm")
    save_model_checkpoint(root / "model", CONFIG, params, [root / "spm.model"], source="test")
    return root / "model", params


def test_directory_contents_and_marker(scanned_checkpoint):
    path, _ = scanned_checkpoint
    assert {p.name for p in path.iterdir()} == {
        MARKER_FILE,
        "model_config.json",
        "params",
        "digests.json",
        "tokenizer",
    }
    info = read_checkpoint_info(path)
    assert (info.param_layout, info.param_dtype, info.source) == ("scanned", "float32", "test")
    assert info.num_params == sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(CONFIG))
    )
    assert ModelConfig.from_dict(json.loads((path / "model_config.json").read_text())) == CONFIG


def test_restore_switches_layout_and_dtype(scanned_checkpoint):
    path, params = scanned_checkpoint
    config, restored = restore_model_checkpoint(
        path, {"scan_layers": False, "param_dtype": "bfloat16"}
    )
    assert not config.scan_layers and not is_scanned(restored)
    assert config.param_dtype == "bfloat16"
    expected = traverse_util.flatten_dict(unscan_params(params))
    got = traverse_util.flatten_dict(restored)
    assert expected.keys() == got.keys()
    for key in expected:
        assert isinstance(got[key], jax.Array) and got[key].dtype == ml_dtypes.bfloat16
        assert np.array_equal(np.asarray(got[key]), expected[key].astype(ml_dtypes.bfloat16))


def test_restore_into_given_shardings_across_layouts(scanned_checkpoint):
    path, _ = scanned_checkpoint
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    target = CONFIG.replace(scan_layers=False)
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, PartitionSpec("data", *[None] * (len(s.shape) - 1))),
        param_shapes(target),
    )
    _, restored = restore_model_checkpoint(path, {"scan_layers": False}, shardings)
    for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert leaf.sharding == sharding


def test_overrides_that_change_the_architecture_are_refused(scanned_checkpoint):
    path, _ = scanned_checkpoint
    with pytest.raises(ValueError, match=r"vocab_size=41 \(stored 40\)"):
        restore_model_checkpoint(path, {"vocab_size": 41})
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        restore_model_checkpoint(path, {"vocab": 41})


def test_save_refuses_params_that_do_not_match_the_config(tmp_path):
    params = random_params(CONFIG, seed=1)
    with pytest.raises(ValueError, match="encoder/layers/mlp/wi/kernel has shape"):
        save_model_checkpoint(tmp_path / "x", CONFIG.replace(encoder_ffn_dim=25), params)
    assert not (tmp_path / "x").exists()


def test_load_returns_a_runnable_model(scanned_checkpoint):
    path, _ = scanned_checkpoint
    loaded = alexatm_jax.load(path, dtype="bfloat16")
    assert loaded.config.dtype == "bfloat16" and loaded.tokenizer_path.name == "spm.model"
    batch = {"encoder_input_tokens": np.array([[5, 6, 7]]), "decoder_input_tokens": [[0, 5]]}
    logits = loaded.logits(batch)
    assert logits.shape == (1, 2, CONFIG.vocab_size) and logits.dtype == np.float32
    assert loaded.encode(batch).shape == (1, 3, CONFIG.d_model)


def test_load_names_what_it_expected(tmp_path):
    with pytest.raises(ValueError, match=f"a model checkpoint \\(contains {MARKER_FILE}\\)"):
        alexatm_jax.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        alexatm_jax.load(tmp_path / "missing")


def test_registered_directory_loaders_are_dispatched(tmp_path, monkeypatch, scanned_checkpoint):
    monkeypatch.setattr(api, "_LOADERS", list(api._LOADERS))
    (tmp_path / "train_state.marker").write_text("")
    path, _ = scanned_checkpoint
    api.register_directory_loader(
        api.DirectoryLoader(
            "a test directory (contains train_state.marker)",
            lambda p: (p / "train_state.marker").is_file(),
            lambda p, sharding, overrides: api._load_model_checkpoint(path, sharding, overrides),
        )
    )
    assert alexatm_jax.load(tmp_path).config == CONFIG
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="or a test directory"):
        alexatm_jax.load(tmp_path / "empty")
