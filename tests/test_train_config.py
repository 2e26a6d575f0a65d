"""TrainConfig (one run's configuration, bound by gin as `train.*`), the state shardings that
come from logical axes, and functions partitioned by the Partitioner."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec
from tiny_config import TINY_MODEL_CONFIG

import gin
from alexatm_jax import gin_registry
from alexatm_jax.partitioning import BATCH_MESH_AXES, MeshConfig, Partitioner
from alexatm_jax.training.config import InvalidTrainArguments, TrainConfig
from alexatm_jax.training.optimizer import OptimizerConfig, make_optimizer
from alexatm_jax.training.state import boxed_abstract_train_state

TINY = TINY_MODEL_CONFIG
RUN_FILES = ["gin/models/tiny.gin", "gin/runs/pretrain.gin", "gin/meshes/cpu_1.gin"]


@pytest.fixture(autouse=True)
def clean_gin():
    yield
    gin.clear_config()


def test_gin_binds_the_whole_run_as_train():
    gin_registry.parse_gin(
        RUN_FILES,
        [
            "MODEL_DIR='/tmp/run'",
            "TRAIN_STEPS=7",
            "BATCH_SIZE=4",
            "CHECKPOINT_PERIOD=5",
            "EVAL_PERIOD=0",
            "train.grad_accum_steps=2",
        ],
    )
    config = gin_registry.train_config_from_gin()
    assert isinstance(config, TrainConfig)
    assert (config.model_dir, config.train_steps, config.batch_size) == ("/tmp/run", 7, 4)
    assert config.grad_accum_steps == 2 and config.rules == "data_parallel"
    assert config.sequence_length == {"inputs": 1024, "targets": 1024}
    assert config.optimizer_config.learning_rate == 1e-4  # the paper's recipe, from the run file


def test_a_required_macro_left_unset_names_itself():
    with pytest.raises(gin_registry.GinConfigError, match="the macro MODEL_DIR is required"):
        gin_registry.parse_gin(
            RUN_FILES, ["TRAIN_STEPS=7", "BATCH_SIZE=4", "CHECKPOINT_PERIOD=5", "EVAL_PERIOD=0"]
        )
    gin_registry.parse_gin(["gin/models/tiny.gin"], [])
    with pytest.raises(gin_registry.GinConfigError, match="binds no train.model_config"):
        gin_registry.train_config_from_gin()


def test_a_plan_needs_no_model_dir():
    from alexatm_jax.cli.plan import parse_gin_config, train_config_from_gin

    parse_gin_config(
        RUN_FILES, ["TRAIN_STEPS=7", "BATCH_SIZE=4", "CHECKPOINT_PERIOD=5", "EVAL_PERIOD=0"], []
    )
    assert train_config_from_gin().model_dir == ""


def test_validate_names_every_bad_value():
    config = TrainConfig(
        model_config=TINY,
        train_steps=0,
        batch_size=4,
        nan_policy="ignore",
        sequence_length={"inputs": 8},
        inject_nonfinite_steps=(0,),
    )
    with pytest.raises(InvalidTrainArguments) as error:
        config.validate()
    message = str(error.value)
    for expected in (
        "train_steps must be >= 1",
        "nan_policy must be one of",
        "sequence_length needs keys",
        "inject_nonfinite_steps are 1-based",
        "model_dir is empty",
    ):
        assert expected in message
    assert TrainConfig(model_config=TINY, train_steps=1, batch_size=4).problems() == []


def test_batch_layout_problem_names_the_multiple_to_use():
    config = TrainConfig(model_config=TINY, train_steps=1, batch_size=12, grad_accum_steps=4)
    assert config.batch_layout_problem(1) is None
    assert "choose a multiple of 8" in config.batch_layout_problem(2)
    assert config.positions_per_step == 12 * 2048
    assert config.with_depths((3, 2)).depths == (3, 2)


def test_optimizer_state_shardings_come_from_logical_axes():
    """Adam moments carry their parameter's logical names; Adafactor's factored statistics
    lose the name of the dimension they average away; size-1 placeholders are unnamed."""
    model = TINY.replace(d_model=256, encoder_ffn_dim=512, decoder_ffn_dim=512)
    adam = boxed_abstract_train_state(model, make_optimizer(OptimizerConfig(), 10))
    mu = _find(adam.opt_state, optax.ScaleByAdamState).mu
    wi = ("encoder", "layers_0", "mlp", "wi", "kernel")
    box = mu
    for key in wi:
        box = box[key]
    assert box.names == ("embed", "mlp")
    ada = boxed_abstract_train_state(model, make_optimizer(OptimizerConfig(name="adafactor"), 10))
    state = _find(ada.opt_state, optax.FactoredState)
    row, col = state.v_row, state.v_col
    for key in wi:
        row, col = row[key], col[key]
    assert row.value.shape == (256,) and row.names == ("embed",)  # mlp (512) averaged away
    assert col.value.shape == (512,) and col.names == ("mlp",)
    bias = state.v_row["encoder"]["layers_0"]["mlp"]["wi"]["bias"]
    assert not isinstance(bias, nn.Partitioned) and bias.shape == (1,)


def _find(tree, kind):
    nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, kind))
    return next(x for x in nodes if isinstance(x, kind))


def test_partitioned_functions_enter_the_mesh_and_rules_themselves():
    partitioner = Partitioner(MeshConfig(), "fsdp")

    def constrained(x):
        return nn.with_logical_constraint(x * 2, ("activation_batch", "activation_embed"))

    fn = partitioner.partition(
        constrained, in_shardings=partitioner.batch_sharding(2), out_shardings=None
    )
    x = jnp.ones((4, 8))
    assert float(fn(x).sum()) == 64.0
    assert fn.eval_shape(x).shape == (4, 8)
    text = fn.trace(x).lower().as_text()
    assert "sharding" in text
    compiled = fn.lower(x).compile()
    assert compiled.output_shardings.spec == PartitionSpec(BATCH_MESH_AXES, None)
    assert nn.get_logical_axis_rules() == ()  # nothing leaks out of the call
