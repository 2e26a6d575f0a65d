"""Test-wide settings: CPU only, quiet TensorFlow, the repository root on hand."""

import os
import pathlib
from typing import TYPE_CHECKING

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

if TYPE_CHECKING:
    from alexatm_jax.model import ModelConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    """The checkout's top directory (where gin/, data/ and tasks/ live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory) -> str:
    """One JAX persistent compilation cache for the CLI launches of every test module: runs of
    the same program in different modules (the smoke model's step) compile it once."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def demo_vocabulary() -> str:
    """Path of the demo SentencePiece vocabulary, trained on data/sample if not there yet.

    Tests whose runs use the default vocabulary ask for it: resolving a vocabulary never trains.
    """
    from tasks.vocab_training import train_demo_vocabulary

    return train_demo_vocabulary()


@pytest.fixture(scope="session")
def tiny_model_config() -> "ModelConfig":
    """tiny_config.TINY_MODEL_CONFIG: the one-layer, d_model 32 test model (a frozen ModelConfig;
    `.replace(...)` gives a variation)."""
    from tiny_config import TINY_MODEL_CONFIG

    return TINY_MODEL_CONFIG


@pytest.fixture(scope="session")
def gcs_server():
    """A GCS server on 127.0.0.1 (fake-gcs-server behind a proxy every GCS client reaches; see
    tests/gcs_server.py). Processes get at it through `gcs_server.environment()`."""
    from gcs_server import GcsServer

    server = GcsServer()
    yield server
    server.stop()
