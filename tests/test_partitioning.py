"""Mesh construction, logical-axis rules, batch sharding and the 8-device sharding checks."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from multidevice_checks import run_multidevice_checks
from tiny_config import tiny_model_config

from alexatm_jax.model import abstract_params
from alexatm_jax.partitioning import (
    BATCH_MESH_AXES,
    RULE_SETS,
    MeshConfig,
    Partitioner,
    resolve_rules,
)

TINY = tiny_model_config(encoder_ffn_dim=48, decoder_ffn_dim=48, max_positions=16, dropout_rate=0.1)


@pytest.mark.parametrize(
    "config, devices, expected",
    [
        (MeshConfig(), 8, (1, 8, 1, 1)),
        (MeshConfig(data=2, fsdp=-1, tensor=2), 8, (1, 2, 2, 2)),
        (MeshConfig(data=1, fsdp=4, tensor=2), 8, (1, 1, 4, 2)),
        (MeshConfig(data=-1, replica=2), 8, (2, 4, 1, 1)),
    ],
)
def test_mesh_config_resolves_the_remaining_axis(config, devices, expected):
    assert config.axis_sizes(devices) == expected


@pytest.mark.parametrize(
    "config, message",
    [
        (MeshConfig(data=3), "needs 3 devices"),
        (MeshConfig(data=-1, fsdp=-1), "only one axis may be -1"),
        (MeshConfig(data=-1, fsdp=3), "does not divide"),
        (MeshConfig(data=0), ">= 1 or -1"),
    ],
)
def test_mesh_config_rejects_impossible_sizes(config, message):
    with pytest.raises(ValueError, match=message):
        config.axis_sizes(8)


@pytest.mark.parametrize(
    "config, devices, slices, expected",
    [
        (MeshConfig(data=1, fsdp=-1), 256, 2, (2, 1, 128, 1)),  # replica across the slices
        (MeshConfig(data=1, fsdp=-1), 512, 4, (4, 1, 128, 1)),
        (MeshConfig(data=1, fsdp=-1, dcn_replica=1, dcn_fsdp=2), 256, 2, (1, 1, 256, 1)),
        (MeshConfig(data=1, fsdp=-1, dcn_replica=2, dcn_data=-1), 512, 4, (2, 2, 128, 1)),
        (MeshConfig(data=1, fsdp=-1, dcn_fsdp=7), 8, 1, (1, 1, 8, 1)),  # one slice: no DCN
    ],
)
def test_mesh_config_multiplies_in_slice_sizes_by_dcn_sizes(config, devices, slices, expected):
    assert config.axis_sizes(devices, slices) == expected


@pytest.mark.parametrize(
    "config, devices, slices, message",
    [
        (MeshConfig(dcn_fsdp=3), 256, 2, "DCN layout: the fixed axes .*does not divide the 2"),
        (MeshConfig(dcn_data=-1), 256, 2, "DCN layout: only one axis may be -1"),
        (MeshConfig(dcn_replica=2, dcn_fsdp=2), 256, 2, "DCN layout needs 4 slices but 2"),
        (MeshConfig(), 10, 3, "cannot form 3 equal slices"),
    ],
)
def test_mesh_config_rejects_a_dcn_layout_that_does_not_fit(config, devices, slices, message):
    with pytest.raises(ValueError, match=message):
        config.axis_sizes(devices, slices)


ACTIVATION_HIDDEN = ("activation_batch", "activation_length", "activation_embed")
ACTIVATION_LOGITS = ("activation_batch", "activation_length", "activation_vocab")


def _spec(rules, names, rule_set=None):
    return tuple(nn.logical_to_mesh_axes(names, rule_set or RULE_SETS[rules]))


@pytest.mark.parametrize("rules", sorted(RULE_SETS))
def test_activation_and_parameter_rules_do_not_interact(rules):
    """Activations and parameters have distinct axis names, so the activation rules can go
    before or after the parameter rules without changing any array's spec (the parameter rules
    keep their own order: it states the fallback of a bias with no embed dimension)."""
    arrays = [
        ("vocab", "embed"),
        ("embed", "vocab"),
        ("embed", "mlp"),
        ("mlp", "embed"),
        ("embed", "heads", "kv"),
        ("heads", "kv", "embed"),
        ("heads", "kv"),
        ("mlp",),
        ("embed",),
        ("vocab",),
        ("layers", "embed", "mlp"),
        ("position", "embed"),
        ("type_vocab", "embed"),
        ACTIVATION_HIDDEN,
        ACTIVATION_LOGITS,
        ("activation_batch", "activation_length", "activation_mlp"),
        ("activation_batch", "activation_length", "activation_heads", "activation_kv"),
    ]
    activation = tuple(r for r in RULE_SETS[rules] if r[0].startswith("activation_"))
    parameter = tuple(r for r in RULE_SETS[rules] if not r[0].startswith("activation_"))
    for names in arrays:
        assert (
            _spec(rules, names, activation + parameter)
            == _spec(rules, names, parameter + activation)
            == _spec(rules, names, parameter + tuple(reversed(activation)))
        ), names


def test_fsdp_rules_shard_params_on_embed_and_activations_on_batch():
    assert _spec("fsdp", ("vocab", "embed")) == (None, "fsdp")
    assert _spec("fsdp", ("embed", "mlp")) == ("fsdp", None)
    assert _spec("fsdp", ("mlp",)) == ("fsdp",)  # biases fall back to their own axis
    assert _spec("fsdp", ("vocab",)) == (None,)  # so an unsharded-embed table is whole
    assert _spec("fsdp", ("layers", "embed", "heads", "kv")) == (None, "fsdp", None, None)
    assert _spec("fsdp", ACTIVATION_HIDDEN) == (BATCH_MESH_AXES, None, None)
    assert _spec("fsdp", ("activation_batch", "activation_length", "activation_mlp")) == (
        BATCH_MESH_AXES,
        None,
        None,
    )


def test_fsdp_tensor_rules_add_megatron_splits():
    assert _spec("fsdp_tensor", ("embed", "mlp")) == ("fsdp", "tensor")
    assert _spec("fsdp_tensor", ("mlp", "embed")) == ("tensor", "fsdp")
    assert _spec("fsdp_tensor", ("embed", "heads", "kv")) == ("fsdp", "tensor", None)
    assert _spec("fsdp_tensor", ("vocab", "embed")) == ("tensor", "fsdp")
    assert _spec(
        "fsdp_tensor",
        ("activation_batch", "activation_length", "activation_heads", "activation_kv"),
    ) == (BATCH_MESH_AXES, None, "tensor", None)
    assert _spec("fsdp_tensor", ACTIVATION_LOGITS) == (BATCH_MESH_AXES, None, "tensor")


def test_data_parallel_rules_replicate_every_parameter():
    for names in (("vocab", "embed"), ("embed", "mlp"), ("heads", "kv", "embed"), ("vocab",)):
        assert set(_spec("data_parallel", names)) == {None}


def test_rules_are_validated():
    with pytest.raises(ValueError, match="Unknown rule set"):
        resolve_rules("zero3")
    with pytest.raises(ValueError, match="names mesh axis 'model'"):
        resolve_rules([("embed", "model")])
    assert resolve_rules([("embed", ["fsdp", "tensor"])]) == (("embed", ("fsdp", "tensor")),)


def test_single_device_partitioner_shards_batches_and_tables_every_parameter():
    partitioner = Partitioner(MeshConfig(), "fsdp")
    assert partitioner.data_shard_info() == (0, 1)
    batch = partitioner.shard_batch({"encoder_input_tokens": np.ones((4, 6), np.int32)})
    array = batch["encoder_input_tokens"]
    assert array.shape == (4, 6) and array.sharding.spec == PartitionSpec(BATCH_MESH_AXES, None)
    table = partitioner.sharding_table(abstract_params(TINY), partitioner.params_shardings(TINY))
    paths = [
        jax.tree_util.keystr(p, simple=True, separator="/")
        for p, _ in jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_params(TINY)))[0]
    ]
    for path in paths:
        assert path in table
    assert f"{len(paths)} arrays" in table


def test_logical_constraints_need_the_activated_partitioner():
    """Under activate() the rules are live; outside it flax finds no rules at all."""
    partitioner = Partitioner(MeshConfig(), "fsdp")
    with partitioner.activate():
        assert nn.get_logical_axis_rules() == RULE_SETS["fsdp"]
    assert nn.get_logical_axis_rules() == ()


# ---------------------------------------------------------------- 8 emulated devices
@pytest.fixture(scope="module")
def checks():
    return run_multidevice_checks()


def test_every_parameter_has_the_sharding_its_rules_ask_for(checks):
    assert checks["init_mismatches"] == []
    assert checks["step_mismatches"] == []
    params = checks["params"]
    assert all(entry["equivalent"] for entry in params.values()), params
    assert params["encoder/layers_0/mlp/wi/kernel"]["actual"] == "('fsdp', 'tensor')"
    assert params["encoder/layers_0/attention/query/kernel"]["actual"] == "('fsdp', 'tensor', None)"
    assert params["token_embedder/embedding"]["actual"] == "('tensor', 'fsdp')"
    assert params["final_logits_bias"]["actual"] == "('tensor',)"


def test_adam_moments_are_sharded_like_their_parameters(checks):
    assert checks["moments_like_params"]


def test_activation_constraints_reach_the_compiled_program(checks):
    assert checks["logits_spec"] == ["('data', 'fsdp')", "None", "tensor"]


def test_adafactor_factored_state_gets_reduced_shardings(checks):
    assert checks["adafactor_init_mismatches"] == []
    assert checks["adafactor_step_mismatches"] == []
    specs = {k.split(".", 1)[1]: v for k, v in checks["adafactor_factored_specs"].items()}
    # wi kernel [embed=32, mlp=64] on ('fsdp', 'tensor'): rows average over mlp (the larger dim)
    wi = "['encoder']['layers_0']['mlp']['wi']['kernel']"
    assert specs["v_row" + wi] == "('fsdp',)" and specs["v_col" + wi] == "('tensor',)"
    # query kernel [embed=32, heads=2, kv=16]: the two largest dims are embed and kv
    query = "['decoder']['layers_0']['self_attention']['query']['kernel']"
    assert specs["v_row" + query] == "('tensor', None)"
    assert specs["v_col" + query] == "('fsdp', 'tensor')"
    assert all(np.isfinite(checks["adafactor_mesh_losses"]))


def test_no_activation_is_replicated_by_a_resharding_fallback(checks):
    """XLA warns 'Involuntary full rematerialization' when it must replicate a tensor to reshard
    it (e.g. a lookup in an embed-sharded table on the data x fsdp x tensor mesh)."""
    assert checks["involuntary_rematerializations"] == 0


def test_eight_device_data_shard_info_for_a_single_process(checks):
    assert checks["data_shard_info"] == [0, 1]
