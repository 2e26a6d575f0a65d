"""The AlexaTM 20B experiment gins parse and bind the paper's recipe (no compilation)."""

from __future__ import annotations

import jax
import pytest

import gin
from alexatm_jax import gin_registry
from alexatm_jax.cli.plan import train_config_from_gin
from alexatm_jax.model.params import param_shapes
from alexatm_jax.training.optimizer import FROZEN, freeze_labels

HARDWARE = {  # gin file -> (devices of the target, accumulation steps, attention, remat policy)
    "gin/experiments/alexatm_20b_v5p256.gin": (128, 2, "splash", "save_mlp"),
    "gin/experiments/alexatm_20b_v4_512.gin": (256, 4, "einsum", "full"),
    "gin/experiments/alexatm_20b_h100_16x8.gin": (128, 2, "einsum", "full"),
}


@pytest.fixture(autouse=True)
def clean_gin():
    yield
    gin.clear_config()


def _job(files, bindings=()):
    gin_registry.parse_gin(files, list(bindings))
    return train_config_from_gin()


@pytest.mark.parametrize("gin_file", sorted(HARDWARE))
def test_pretraining_experiment_binds_the_paper_recipe(gin_file):
    devices, accum, attention, remat = HARDWARE[gin_file]
    job = _job([gin_file])
    cfg, opt = job.model_config, job.optimizer_config
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.d_model) == (46, 32, 4096)
    assert (cfg.dtype, cfg.scan_layers, cfg.remat_policy) == ("bfloat16", True, remat)
    assert cfg.attention_impl == attention
    assert job.batch_size == 2048 and job.sequence_length == {"inputs": 1024, "targets": 1024}
    assert job.train_steps == 500_000 and job.grad_accum_steps == accum
    assert (opt.name, opt.learning_rate, opt.end_learning_rate, opt.weight_decay) == (
        "adamw",
        1e-4,
        5e-6,
        0.1,
    )
    assert job.rules == "fsdp"
    assert job.data_source == "prepared" and job.prepared_data.startswith("gs://")
    assert job.mesh_config.axis_sizes(devices) == (1, 1, devices, 1)
    assert job.batch_size % (devices * accum) == 0
    bindings = gin.get_bindings("train")
    assert bindings["model_dir"].startswith("gs://")
    assert bindings["checkpoint_period"] > 0 and bindings["eval_period"] > 0


def test_experiment_macros_override_the_job():
    job = _job(
        ["gin/experiments/alexatm_20b_h100_16x8.gin"],
        [
            "MODEL_DIR = 'gs://b/run'",
            "TRAIN_STEPS = 10",
            "BATCH_SIZE = 16",
            "CHECKPOINT_PERIOD = 5",
            "EVAL_PERIOD = 0",
            "MESH_DATA = 2",
            "MESH_FSDP = 4",
            "MESH_TENSOR = 1",
        ],
    )
    assert (job.train_steps, job.batch_size) == (10, 16)
    assert job.mesh_config.axis_sizes(8) == (1, 2, 4, 1)
    bindings = gin.get_bindings("train")
    assert (bindings["model_dir"], bindings["checkpoint_period"], bindings["eval_period"]) == (
        "gs://b/run",
        5,
        0,
    )


def test_encoder_warm_start_lines_select_the_10b_encoder():
    job = _job(
        ["gin/experiments/alexatm_20b_v5p256.gin"],
        [
            "train.init_from = '/ckpt/encoder'",
            "train.init_from_prefixes = ('encoder', 'token_embedder')",
            "OptimizerConfig.freeze_prefixes = ('encoder', 'token_embedder')",
            "OptimizerConfig.freeze_steps = 100000",
        ],
    )
    opt = job.optimizer_config
    assert opt.freeze_prefixes == ("encoder", "token_embedder") and opt.freeze_steps == 100_000
    shapes = param_shapes(job.model_config)
    labels = freeze_labels(opt.freeze_prefixes)(shapes)
    frozen = sum(
        x.size
        for x, label in zip(jax.tree.leaves(shapes), jax.tree.leaves(labels))
        if label == FROZEN
    )
    assert 9.5e9 < frozen < 10.5e9  # docs/paper_facts.md#encoder-warm-start: ~10B


FINETUNE_HARDWARE = {  # gin file -> (devices, remat policy, attention)
    "gin/experiments/alexatm_20b_finetune_v5p256.gin": (128, "save_mlp", "splash"),
    "gin/experiments/alexatm_20b_finetune_v4_512.gin": (256, "full", "einsum"),
}


@pytest.mark.parametrize("gin_file", sorted(FINETUNE_HARDWARE))
def test_finetune_experiments_train_a_seq2seq_task_from_the_checkpoint(gin_file):
    devices, remat, attention = FINETUNE_HARDWARE[gin_file]
    # The paper's architecture first, as for planning without the checkpoint at hand.
    job = _job(["gin/models/alexatm_20b.gin", gin_file], ["INIT_FROM = '/ckpt/alexatm-20b-jax'"])
    assert job.init_from == "/ckpt/alexatm-20b-jax" and job.mixture == "finetune"
    assert gin.query_parameter("%FINETUNE_DATA").startswith("gs://")
    assert [hook.task for hook in job.eval_hooks] == ["finetune"] and job.keep_best
    assert job.optimizer_config.learning_rate == 1e-5
    assert (job.model_config.remat_policy, job.model_config.attention_impl) == (remat, attention)
    assert job.mesh_config.axis_sizes(devices) == (1, 1, devices, 1)
    assert job.batch_size % (devices * job.grad_accum_steps) == 0
    # Without the model file the recipe binds no architecture field: those come from INIT_FROM.
    gin.clear_config()
    gin_registry.parse_gin([gin_file])
    from alexatm_jax.training.checkpoint_model import ARCHITECTURE_FIELDS

    assert not set(gin.get_bindings("ModelConfig")) & set(ARCHITECTURE_FIELDS)


def test_eval_config_describes_bfloat16_weights_on_four_devices():
    gin_registry.parse_gin(["gin/experiments/alexatm_20b_eval.gin"])
    cfg = gin_registry.model_config_from_gin()
    assert (cfg.param_dtype, cfg.dtype, cfg.num_encoder_layers) == ("bfloat16", "bfloat16", 46)
    assert gin.query_parameter("%MESH_FSDP") == 4


@pytest.mark.parametrize(
    "gin_file, batch",
    [
        ("gin/experiments/alexatm_20b_eval_v5p8.gin", 128),
        ("gin/experiments/alexatm_20b_eval_v4_8.gin", 32),
    ],
)
def test_planned_eval_gins_record_the_chosen_layout(gin_file, batch):
    # docs/paper_on_tpu.md: data=2 x tensor=2 on 4 chips, as `alexatm-eval --fsdp 1 --tensor 2
    # --rules fsdp_tensor --batch_size N`; the batch splits over the 2 data shards.
    gin_registry.parse_gin([gin_file])
    cfg = gin_registry.model_config_from_gin()
    assert (cfg.param_dtype, cfg.dtype) == ("bfloat16", "bfloat16")
    layout = tuple(gin.query_parameter(f"%{m}") for m in ("MESH_DATA", "MESH_FSDP", "MESH_TENSOR"))
    assert layout == (2, 1, 2) and gin.query_parameter("%PARTITION_RULES") == "fsdp_tensor"
    assert gin.query_parameter("%BATCH_SIZE") == batch and batch % 2 == 0
    assert cfg.num_decoder_heads % 2 == 0


def test_alexatm_1b_model_is_about_one_billion_parameters():
    from alexatm_jax.model.params import count_params

    gin_registry.parse_gin(["gin/models/alexatm_1b.gin"])
    cfg = gin_registry.model_config_from_gin()
    assert 0.9e9 < count_params(param_shapes(cfg)) < 1.2e9
    assert cfg.d_model // cfg.num_encoder_heads == 128 and cfg.encoder_ffn_dim == 4 * cfg.d_model
    assert not cfg.share_embeddings and not cfg.tie_word_embeddings
