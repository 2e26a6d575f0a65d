"""gin: ModelConfig bindings, file lookup and include checks."""

from __future__ import annotations

import pytest

import gin
from alexatm_jax import gin_registry
from alexatm_jax.model import ModelConfig

MODEL_FILES = ["tiny", "small", "base", "large", "xl", "alexatm_20b"]


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_file_builds_a_config(name):
    gin_registry.parse_gin([f"models/{name}.gin"])
    config = gin_registry.model_config_from_gin()
    assert type(config) is ModelConfig
    assert gin.query_parameter("ModelConfig.vocab_size") is not None


def test_later_bindings_override_the_vocab_macro(tmp_path):
    experiment = tmp_path / "exp.gin"
    experiment.write_text("include 'models/tiny.gin'\nVOCAB_SIZE = 777\n")
    gin_registry.parse_gin([experiment], ["ModelConfig.num_encoder_layers = 3"])
    config = gin_registry.model_config_from_gin()
    assert (config.vocab_size, config.num_encoder_layers, config.d_model) == (777, 3, 64)


def test_missing_included_file_is_named_before_parsing(tmp_path):
    experiment = tmp_path / "exp.gin"
    experiment.write_text("include 'models/tiny.gin'\ninclude 'runs/not_written_yet.gin'\n")
    with pytest.raises(FileNotFoundError, match=r"'runs/not_written_yet.gin' \(included from "):
        gin_registry.parse_gin([experiment])


def test_misspelt_fields_fail_at_parse_time():
    with pytest.raises(ValueError, match="doesn't have a parameter named 'd_modle'"):
        gin_registry.parse_gin(["models/tiny.gin"], ["ModelConfig.d_modle = 3"])
