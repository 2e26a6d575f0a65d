"""jax -> HF -> jax round trips, loading exports with the reference, and conversion errors."""

from __future__ import annotations

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
from alexa_teacher_models import AlexaTMSeq2SeqForConditionalGeneration
from alexatm_reference import max_abs_diff_on_real_positions, padded_batch, reference_logits
from flax import traverse_util
from random_params import random_params
from tiny_config import tiny_model_config

import alexatm_jax
from alexatm_jax.checkpoints import restore_model_checkpoint, save_model_checkpoint
from alexatm_jax.cli import convert as convert_cli
from alexatm_jax.conversion import hf_files
from alexatm_jax.conversion.hf_names import model_config_to_hf_config
from alexatm_jax.conversion.hf_to_jax import convert_hf_to_checkpoint
from alexatm_jax.conversion.jax_to_hf import export_checkpoint_to_hf, hf_tensors, parse_size
from alexatm_jax.conversion.safetensors_stream import SafetensorsFile, TensorSpec, write_safetensors

# transformers 4.30.2 warns about its own use of a deprecated argument in every forward.
pytestmark = pytest.mark.filterwarnings("ignore:The `device` argument is deprecated")
UNTIED = tiny_model_config(
    vocab_size=61,
    d_model=16,
    num_encoder_layers=2,
    num_decoder_layers=3,
    num_decoder_heads=4,
    encoder_ffn_dim=24,
    decoder_ffn_dim=40,
    max_positions=12,
    type_vocab_size=2,
    share_embeddings=False,
    tie_word_embeddings=False,
    dropout_rate=0.1,
)
SHARED_TIED = UNTIED.replace(share_embeddings=True, tie_word_embeddings=True, type_vocab_size=1)


def assert_bit_equal(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        x, y = np.asarray(flat_a[key]), np.asarray(flat_b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), f"{'/'.join(key)} differs"


@pytest.mark.parametrize(
    "config,scan,dtype,shard",
    [
        (UNTIED, False, np.float32, "5GB"),
        (UNTIED, True, ml_dtypes.bfloat16, "3KB"),
        (SHARED_TIED, True, np.float32, "3KB"),
        (SHARED_TIED, False, ml_dtypes.bfloat16, "5GB"),
    ],
    ids=[
        "untied-unscanned-f32",
        "untied-scanned-bf16-sharded",
        "shared-scanned-f32-sharded",
        "shared-unscanned-bf16",
    ],
)
def test_jax_hf_jax_round_trip_is_bit_exact(tmp_path, config, scan, dtype, shard):
    config = config.replace(scan_layers=scan)
    params = random_params(config, seed=1, dtype=dtype)
    save_model_checkpoint(tmp_path / "a", config, params)
    export_checkpoint_to_hf(
        tmp_path / "a", tmp_path / "hf", max_shard_size=shard, show_progress=False
    )
    sharded = (tmp_path / "hf" / hf_files.SAFETENSORS_INDEX).is_file()
    assert sharded == (shard == "3KB")
    convert_hf_to_checkpoint(tmp_path / "hf", tmp_path / "b", scan_layers=scan, show_progress=False)
    restored_config, restored = restore_model_checkpoint(tmp_path / "b", to_numpy=True)
    assert restored_config == config.replace(param_dtype=np.dtype(dtype).name)
    assert_bit_equal(params, restored)


@pytest.fixture(scope="module")
def exported_untied(tmp_path_factory):
    """An exported (sharded) untied random model: (our checkpoint, hf dir, config, params)."""
    root = tmp_path_factory.mktemp("exported")
    params = random_params(UNTIED, seed=2)
    save_model_checkpoint(root / "ckpt", UNTIED, params)
    export_checkpoint_to_hf(root / "ckpt", root / "hf", max_shard_size="12KB", show_progress=False)
    return root / "ckpt", root / "hf", UNTIED, params


ALIAS_KEYS = {
    "model.encoder.token_embeddings.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
}


@pytest.mark.parametrize(
    "config", [UNTIED, SHARED_TIED.replace(scan_layers=True)], ids=["untied", "shared-tied-scanned"]
)
def test_export_loads_in_reference_with_every_tensor(tmp_path, config):
    params = random_params(config, seed=3)
    save_model_checkpoint(tmp_path / "ckpt", config, params)
    export_checkpoint_to_hf(tmp_path / "ckpt", tmp_path / "hf", show_progress=False)
    model, info = AlexaTMSeq2SeqForConditionalGeneration.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(info["missing_keys"]) <= ALIAS_KEYS  # same modules as model.shared (HF warns)
    state = model.state_dict()
    for key, expected in hf_tensors(config, params).items():
        assert np.array_equal(state[key].numpy(), expected), key
    if config.tie_word_embeddings:
        assert torch.equal(model.lm_head.weight, model.model.shared.weight)


def test_exported_model_logits_match_ours(exported_untied):
    ckpt, hf_dir, config, _ = exported_untied
    assert (hf_dir / hf_files.SAFETENSORS_INDEX).is_file()  # sharded export
    reference = AlexaTMSeq2SeqForConditionalGeneration.from_pretrained(hf_dir).eval()
    batch = padded_batch(
        np.random.default_rng(5), config.vocab_size, config.type_vocab_size, [8, 5, 2], [6, 3, 1]
    )
    diff = max_abs_diff_on_real_positions(
        alexatm_jax.load(ckpt).logits(batch), reference_logits(reference, batch), batch
    )
    assert diff < 1e-4


def write_hf_dir(directory, config, tensors):
    """A single-file safetensors HF directory holding exactly `tensors`."""
    directory.mkdir(exist_ok=True)
    write_safetensors(
        directory / "model.safetensors",
        [TensorSpec(k, v.dtype, v.shape) for k, v in tensors.items()],
        lambda spec: np.asarray(tensors[spec.name]),
    )
    (directory / "config.json").write_text(json.dumps(model_config_to_hf_config(config)))


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path):
    tensors = hf_tensors(UNTIED, random_params(UNTIED, seed=4))
    del tensors["model.decoder.layers.1.fc2.weight"]
    tensors["model.decoder.extra_gate.weight"] = np.zeros((2, 2), np.float32)
    tensors["model.decoder.layers.0.fc1.bias"] = np.zeros((3,), np.float32)
    write_hf_dir(tmp_path / "broken", UNTIED, tensors)
    with pytest.raises(ValueError) as error:
        convert_hf_to_checkpoint(tmp_path / "broken", tmp_path / "out", show_progress=False)
    message = str(error.value)
    assert "missing keys (1): model.decoder.layers.1.fc2.weight" in message
    assert "unexpected keys (1): model.decoder.extra_gate.weight" in message
    assert "wrong shapes (1): model.decoder.layers.0.fc1.bias [3] (expected [40])" in message
    assert not (tmp_path / "out").exists()


def test_tied_alias_must_equal_its_embedding(tmp_path):
    tensors = hf_tensors(SHARED_TIED, random_params(SHARED_TIED, seed=4))
    tensors["lm_head.weight"] = tensors["model.shared.weight"] + 1  # contradicts the tie
    write_hf_dir(tmp_path, SHARED_TIED, tensors)
    with pytest.raises(ValueError, match="must hold the same tensor"):
        convert_hf_to_checkpoint(tmp_path, tmp_path / "out", show_progress=False)


def test_aliases_and_optional_keys_are_accepted(tmp_path):
    config = SHARED_TIED
    params = random_params(config, seed=6)
    tensors = hf_tensors(config, params)
    embedding = tensors.pop("model.shared.weight")
    tensors["model.encoder.token_embeddings.weight"] = embedding  # only the alias is stored
    tensors["model.decoder.embed_tokens.weight"] = embedding
    tensors["lm_head.weight"] = embedding
    del tensors["final_logits_bias"]  # the reference recreates it as zeros
    write_hf_dir(tmp_path / "hf", config, tensors)
    convert_hf_to_checkpoint(tmp_path / "hf", tmp_path / "out", show_progress=False)
    _, restored = restore_model_checkpoint(tmp_path / "out", to_numpy=True)
    assert np.array_equal(restored["token_embedder"]["embedding"], embedding)
    assert not restored["final_logits_bias"].any()


def test_our_safetensors_match_the_library_bit_for_bit(tmp_path):
    from safetensors import safe_open

    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # non-contiguous source
        "b": (np.arange(5) / 3).astype(ml_dtypes.bfloat16),
        "c": np.arange(3, dtype=np.int64),
    }
    write_safetensors(
        tmp_path / "x.safetensors",
        [TensorSpec(k, v.dtype, v.shape) for k, v in arrays.items()],
        lambda spec: arrays[spec.name],
    )
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert torch.equal(f.get_tensor("a"), torch.tensor(arrays["a"]))
        assert torch.equal(
            f.get_tensor("b").view(torch.int16), torch.tensor(arrays["b"].view(np.int16))
        )
    reread = SafetensorsFile(tmp_path / "x.safetensors")
    for key, value in arrays.items():
        assert reread.tensor(key).tobytes() == np.ascontiguousarray(value).tobytes()


def test_bin_files_need_torch_with_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch"):
        hf_files.open_weight_file(tmp_path / "pytorch_model.bin")


def test_output_directory_is_never_clobbered_or_half_written(
    tmp_path, exported_untied, monkeypatch
):
    _, hf_dir, _, _ = exported_untied
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_hf_to_checkpoint(hf_dir, tmp_path / "taken", show_progress=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"

    from alexatm_jax.checkpoints import model_checkpoint

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_checkpoint, "copy_file", crash)  # dies copying tokenizer files
    (hf_dir.parent / "tok").mkdir(exist_ok=True)
    tokenizer = hf_dir.parent / "tok" / "spm.model"
    tokenizer.write_bytes(b"x")
    with pytest.raises(RuntimeError, match="disk full"):
        save_model_checkpoint(tmp_path / "new", UNTIED, random_params(UNTIED, 0), [tokenizer])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_cli_round_trip_with_tokenizer_files(tmp_path, exported_untied, capsys):
    _, hf_dir, config, params = exported_untied
    work = tmp_path / "hf"
    shutil.copytree(hf_dir, work)
    (work / "spm.model").write_bytes(b"sentencepiece bytes")
    (work / "special_tokens_map.json").write_text("{}")
    assert (
        convert_cli.main(
            [
                "hf-to-jax",
                "--hf_dir",
                str(work),
                "--out",
                str(tmp_path / "c"),
                "--scan_layers",
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    loaded = alexatm_jax.load(tmp_path / "c")
    assert loaded.config.scan_layers and loaded.config.param_dtype == "bfloat16"
    assert loaded.tokenizer_path.read_bytes() == b"sentencepiece bytes"
    assert (
        convert_cli.main(
            [
                "jax-to-hf",
                "--checkpoint",
                str(tmp_path / "c"),
                "--out",
                str(tmp_path / "back"),
                "--dtype",
                "float32",
                "--max_shard_size",
                "2KB",
            ]
        )
        == 0
    )
    assert "wrote HuggingFace directory" in capsys.readouterr().out
    assert {"spm.model", "special_tokens_map.json", "config.json"} <= {
        p.name for p in (tmp_path / "back").iterdir()
    }
    back = traverse_util.flatten_dict(
        restore_model_checkpoint(
            convert_hf_to_checkpoint(tmp_path / "back", tmp_path / "d", show_progress=False),
            to_numpy=True,
        )[1]
    )
    for key, value in traverse_util.flatten_dict(params).items():  # f32 -> bf16 -> f32
        expected = value.astype(ml_dtypes.bfloat16).astype(np.float32)
        assert np.array_equal(back[key], expected), key


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert_cli.main(["hf-to-jax", "--hf_dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "has no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_cli.main(["jax-to-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path)])
    assert "not a model checkpoint" in capsys.readouterr().err
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("five gigs")


@pytest.mark.parametrize("safe_serialization", [False, True], ids=["bin", "safetensors"])
def test_bfloat16_reference_files_are_read_bit_exact(tmp_path, safe_serialization):
    from alexatm_reference import random_reference_model, reference_config

    reference = random_reference_model(reference_config(), seed=11).to(torch.bfloat16)
    reference.save_pretrained(tmp_path / "hf", safe_serialization=safe_serialization)
    convert_hf_to_checkpoint(tmp_path / "hf", tmp_path / "ckpt", show_progress=False)
    config, params = restore_model_checkpoint(tmp_path / "ckpt", to_numpy=True)
    assert config.param_dtype == "bfloat16"
    state = reference.state_dict()
    for key, ours in hf_tensors(config, params).items():
        if key != "model.encoder.position_ids":
            expected = state[key].view(torch.int16).numpy()
            assert np.array_equal(np.ascontiguousarray(ours).view(np.int16), expected), key


def test_safetensors_conversions_need_no_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` now fails
    params = random_params(SHARED_TIED, seed=8)
    save_model_checkpoint(tmp_path / "a", SHARED_TIED, params)
    export_checkpoint_to_hf(tmp_path / "a", tmp_path / "hf", show_progress=False)
    convert_hf_to_checkpoint(tmp_path / "hf", tmp_path / "b", show_progress=False)
    assert_bit_equal(params, restore_model_checkpoint(tmp_path / "b", to_numpy=True)[1])
