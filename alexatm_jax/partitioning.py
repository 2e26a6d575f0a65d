"""The device mesh and the logical-axis rules: the one place that knows mesh axis names.

Model code names logical axes only. Parameters use `vocab`, `embed`, `mlp`, `heads`, `kv`,
`layers`, `position`, `type_vocab`; activations use their own names, `activation_batch`,
`activation_length`, `activation_embed`, `activation_mlp`, `activation_heads`, `activation_kv`,
`activation_vocab`, so that no rule depends on the order of the rules. A `Partitioner` maps them
onto a 4-axis mesh ('replica', 'data', 'fsdp', 'tensor') with one of the `RULE_SETS`, builds
`NamedSharding`s (the shardings of a whole abstract tree come from its flax `Partitioned` boxes),
turns host batches into global arrays, and jits functions that run under its mesh and rules
(`Partitioner.partition`).

Rules follow Flax's semantics: within one array, a rule is skipped when its mesh axis is already
used by another dimension of that array (a parameter ('heads', 'kv', 'embed') under 'fsdp' is
sharded on heads only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import abstract_params

MESH_AXES = ("replica", "data", "fsdp", "tensor")
BATCH_MESH_AXES = ("replica", "data", "fsdp")
LogicalRules = tuple[tuple[str, Any], ...]

BATCH_AXES = ("activation_batch", "activation_length")  # a [batch, length] input feature

_UNSHARDED_ACTIVATIONS = tuple(
    (name, None) for name in ("activation_length", "activation_embed", "activation_kv")
)
_NEVER_SHARDED = (("kv", None), ("layers", None), ("position", None), ("type_vocab", None))
_BATCH = (("activation_batch", BATCH_MESH_AXES),)

RULE_SETS: dict[str, LogicalRules] = {
    # Pure data parallelism: every parameter replicated, the batch split over all batch axes.
    "data_parallel": _BATCH
    + _UNSHARDED_ACTIVATIONS
    + (
        ("activation_mlp", None),
        ("activation_heads", None),
        ("activation_vocab", None),
        ("embed", None),
        ("mlp", None),
        ("heads", None),
        ("vocab", None),
    )
    + _NEVER_SHARDED,
    # ZeRO-3-like (docs/paper_facts.md#training-scale): parameters, gradients and optimizer
    # state split over 'fsdp' on their embed dimension; biases without one fall back to their
    # mlp/heads axis.
    # The [vocab] logits bias stays replicated, so that an embedding table unsharded on embed for
    # a lookup is whole (the model gathers it in the compute dtype, as ZeRO-3 does).
    "fsdp": _BATCH
    + _UNSHARDED_ACTIVATIONS
    + (
        ("activation_mlp", None),
        ("activation_heads", None),
        ("activation_vocab", None),
        ("embed", "fsdp"),
        ("mlp", "fsdp"),
        ("heads", "fsdp"),
        ("vocab", None),
    )
    + _NEVER_SHARDED,
    # FSDP plus Megatron-style tensor parallelism: heads, FFN width and vocabulary over 'tensor',
    # for parameters and activations alike.
    "fsdp_tensor": _BATCH
    + _UNSHARDED_ACTIVATIONS
    + (
        ("activation_mlp", "tensor"),
        ("activation_heads", "tensor"),
        ("activation_vocab", "tensor"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
    )
    + _NEVER_SHARDED,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes within one slice; exactly one may be -1, meaning "all remaining
    devices of the slice".

    `replica` is the outermost axis (across slices / nodes: pure data parallelism with
    replicated parameters), then `data`, `fsdp` and `tensor` (innermost: fastest interconnect).

    On a multi-slice TPU job the `dcn_*` fields say how many slices each axis spans (the axis's
    size is then its in-slice size times its DCN size); exactly one may be -1, "all remaining
    slices", and they must multiply to the slice count. By default the slices lie along
    `replica`, so the data-center network (DCN) carries only the gradient all-reduce of pure data
    parallelism. On one slice every DCN size is 1 and the sizes above are the mesh's.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    replica: int = 1
    dcn_replica: int = -1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1

    def axis_sizes(self, num_devices: int, num_slices: int = 1) -> tuple[int, int, int, int]:
        """(replica, data, fsdp, tensor) sizes of the whole mesh for `num_devices` devices in
        `num_slices` equal slices: the in-slice sizes times the DCN sizes, with -1 resolved.

        Raises ValueError naming the problem when the sizes do not fit the devices or slices.
        """
        if num_slices < 1 or num_devices % num_slices:
            raise ValueError(
                f"{num_devices} devices cannot form {num_slices} equal slices; each slice must "
                "have the same number of devices"
            )
        ici = self.ici_sizes(num_devices // num_slices)
        dcn = self.dcn_sizes(num_slices)
        return tuple(i * d for i, d in zip(ici, dcn))  # type: ignore[return-value]

    def ici_sizes(self, devices_per_slice: int) -> tuple[int, int, int, int]:
        """(replica, data, fsdp, tensor) sizes within one slice of `devices_per_slice` devices."""
        sizes = {name: getattr(self, name) for name in MESH_AXES}
        return _resolve_sizes(sizes, devices_per_slice, f"MeshConfig {self}", "devices")

    def dcn_sizes(self, num_slices: int) -> tuple[int, int, int, int]:
        """(replica, data, fsdp, tensor): how many of the `num_slices` slices each axis spans."""
        sizes = {f"dcn_{name}": getattr(self, f"dcn_{name}") for name in MESH_AXES}
        if num_slices == 1:
            return (1, 1, 1, 1)
        return _resolve_sizes(sizes, num_slices, "MeshConfig DCN layout", "slices")


def _resolve_sizes(
    sizes: dict[str, int], total: int, what: str, unit: str
) -> tuple[int, int, int, int]:
    """`sizes` (one of them may be -1) resolved so that they multiply to `total` `unit`.
    Raises ValueError naming the fields to change."""
    unknown = [name for name, size in sizes.items() if size == -1]
    bad = [f"{name}={size}" for name, size in sizes.items() if size == 0 or size < -1]
    if bad:
        raise ValueError(f"{what}: sizes must be >= 1 or -1, got {', '.join(bad)}")
    if len(unknown) > 1:
        raise ValueError(f"{what}: only one axis may be -1, got {unknown}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if unknown:
        if total % known:
            fixed = ", ".join(f"{k}={v}" for k, v in sizes.items() if v != -1)
            raise ValueError(
                f"{what}: the fixed axes ({fixed}) use {known} {unit}, which does not divide "
                f"the {total} available; change the sizes so their product divides {total}"
            )
        sizes = dict(sizes, **{unknown[0]: total // known})
    elif known != total:
        raise ValueError(
            f"{what} needs {known} {unit} but {total} are available; set one axis to -1 or "
            f"make the sizes multiply to {total}"
        )
    return tuple(sizes.values())  # type: ignore[return-value]


def resolve_rules(rules: str | Sequence[tuple[str, Any]]) -> LogicalRules:
    """A rule tuple from a `RULE_SETS` name or an explicit sequence of (logical, mesh) pairs."""
    if isinstance(rules, str):
        if rules not in RULE_SETS:
            raise ValueError(
                f"Unknown rule set {rules!r}; choose one of {sorted(RULE_SETS)} or "
                "pass a sequence of (logical_axis, mesh_axes) pairs"
            )
        return RULE_SETS[rules]
    resolved = tuple((str(name), _as_mesh_axes(target)) for name, target in rules)
    for name, target in resolved:
        for axis in target if isinstance(target, tuple) else (target,):
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(
                    f"Rule ({name!r}, {target!r}) names mesh axis {axis!r}; the mesh "
                    f"axes are {MESH_AXES}"
                )
    return resolved


def _as_mesh_axes(target: Any) -> Any:
    return tuple(target) if isinstance(target, list) else target


def build_mesh(mesh_config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes MESH_AXES (all `AxisType.Auto`) over `devices` (default: all).

    Devices of several TPU slices (distinct `slice_index`) are laid out by
    `create_hybrid_device_mesh`: each axis spans `mesh_config.dcn_*` slices, its in-slice part
    on ICI."""
    devices = list(jax.devices() if devices is None else devices)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    shape = mesh_config.axis_sizes(len(devices), num_slices)
    if num_slices > 1:
        from jax.experimental import mesh_utils

        ici = mesh_config.ici_sizes(len(devices) // num_slices)
        dcn = mesh_config.dcn_sizes(num_slices)
        array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
        return Mesh(array, MESH_AXES, axis_types=auto)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


class Partitioner:
    """Owns the mesh and the logical-axis rules; everything sharding-related goes through it."""

    def __init__(
        self,
        mesh_config: MeshConfig = MeshConfig(),
        rules: str | Sequence[tuple[str, Any]] = "fsdp",
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        self.mesh_config = mesh_config
        self.rules = resolve_rules(rules)
        self.rules_name = rules if isinstance(rules, str) else "custom"
        self.mesh = build_mesh(mesh_config, devices)
        self._data_shard_info: tuple[int, int] | None = None

    def __repr__(self) -> str:
        shape = ", ".join(f"{k}={v}" for k, v in self.mesh.shape.items())
        return f"Partitioner(mesh=({shape}), rules={self.rules_name})"

    @contextlib.contextmanager
    def activate(self) -> Iterator[Partitioner]:
        """Context in which the mesh is set (`jax.set_mesh`) and the logical rules are active.

        Flax's logical constraints are silent no-ops without both. Functions made by
        `partition` enter it themselves; enter it by hand only to trace something else.
        """
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield self

    def partition(
        self,
        fn: Callable[..., Any],
        in_shardings: Any = None,
        out_shardings: Any = None,
        donate_argnums: int | Sequence[int] = (),
    ) -> PartitionedFunction:
        """`fn` jitted with these shardings (None: jit infers them); calling, tracing,
        lowering and shape evaluation all run under this partitioner's mesh and rules."""
        shardings = {
            name: value
            for name, value in (("in_shardings", in_shardings), ("out_shardings", out_shardings))
            if value is not None
        }
        jitted = jax.jit(fn, donate_argnums=donate_argnums, **shardings)
        return PartitionedFunction(jitted, self)

    @property
    def replicated(self) -> NamedSharding:
        """The sharding of an array every device holds whole (scalars, keys, counters)."""
        return NamedSharding(self.mesh, PartitionSpec())

    # ----------------------------------------------------------------- logical -> mesh
    def logical_to_mesh_spec(
        self,
        logical: PartitionSpec | Sequence[str | None] | None,
        shape: Sequence[int] | None = None,
    ) -> PartitionSpec:
        """The mesh PartitionSpec for one array's logical axis names.

        With `shape`, a dimension whose size is not divisible by its mesh axes is left
        unsharded (e.g. a 2-row token-type table on an 8-way fsdp axis).
        """
        if logical is None or len(logical) == 0:  # unnamed: replicated
            return PartitionSpec()
        spec = nn.logical_to_mesh_axes(tuple(logical), self.rules)
        if shape is None:
            return spec
        entries = list(spec) + [None] * (len(shape) - len(spec))
        kept = [
            entry if size % self._axes_size(entry) == 0 else None
            for entry, size in zip(entries, shape)
        ]
        return PartitionSpec(*kept)

    def _axes_size(self, entry: Any) -> int:
        if entry is None:
            return 1
        names = entry if isinstance(entry, tuple) else (entry,)
        return math.prod(self.mesh.shape[name] for name in names)

    def logical_to_sharding(self, logical_tree: Any, shapes: Any = None) -> Any:
        """Tree of NamedShardings for a tree of logical PartitionSpecs (leaves: PartitionSpec).

        `shapes` (optional, same structure, leaves with `.shape`) enables the divisibility check
        of `logical_to_mesh_spec`.
        """
        is_spec = lambda x: isinstance(x, PartitionSpec) or x is None
        if shapes is None:
            return jax.tree.map(
                lambda s: NamedSharding(self.mesh, self.logical_to_mesh_spec(s)),
                logical_tree,
                is_leaf=is_spec,
            )
        return jax.tree.map(
            lambda s, x: NamedSharding(self.mesh, self.logical_to_mesh_spec(s, x.shape)),
            logical_tree,
            shapes,
            is_leaf=is_spec,
        )

    def logical_shardings(self, abstract_tree: Any) -> Any:
        """NamedSharding per leaf of a tree whose arrays sit in flax `Partitioned` boxes (as
        `jax.eval_shape` of an initialiser returns them): each box's logical names by the rules,
        with `logical_to_mesh_spec`'s divisibility check; unboxed leaves are replicated."""
        specs = nn.get_partition_spec(abstract_tree)
        return self.logical_to_sharding(specs, _strip_boxes(abstract_tree))

    def params_shardings(self, model_config: ModelConfig) -> Any:
        """NamedSharding per parameter of `model_config`'s model, by the rules."""
        return self.logical_shardings(abstract_params(model_config))

    # ----------------------------------------------------------------- batches
    def batch_spec(self, ndim: int = 2) -> PartitionSpec:
        """PartitionSpec of a batch array: leading dimension over the batch mesh axes."""
        return self.logical_to_mesh_spec(BATCH_AXES[:ndim] + (None,) * max(ndim - 2, 0))

    def batch_sharding(self, ndim: int = 2) -> NamedSharding:
        """NamedSharding of a [global_batch, ...] array of `ndim` dimensions."""
        return NamedSharding(self.mesh, self.batch_spec(ndim))

    @property
    def num_batch_shards(self) -> int:
        """How many ways the global batch is split (product of the batch mesh axes' sizes)."""
        return self._axes_size(self.batch_spec(1)[0])

    def data_shard_info(self) -> tuple[int, int]:
        """(shard_index, num_shards) of the input data this process must read.

        Processes whose devices hold the same rows of the global batch (e.g. tensor-parallel
        partners) get the same index. Raises ValueError if a process's rows are not one
        contiguous, equally sized block (a mesh this data layout does not support).
        """
        if self._data_shard_info is None:
            self._data_shard_info = self._compute_data_shard_info()
        return self._data_shard_info

    def _compute_data_shard_info(self) -> tuple[int, int]:
        sharding = self.batch_sharding(1)
        rows_of: dict[int, set[int]] = {}
        for device, index in sharding.devices_indices_map((self.num_batch_shards,)).items():
            rows = range(self.num_batch_shards)[index[0]]
            rows_of.setdefault(device.process_index, set()).update(rows)
        blocks = sorted({tuple(sorted(rows)) for rows in rows_of.values()})
        width = len(blocks[0])
        for i, block in enumerate(blocks):
            if block != tuple(range(i * width, (i + 1) * width)):
                raise ValueError(
                    f"Process batch rows {blocks} are not contiguous equal blocks; "
                    "reorder the mesh so each process holds one block of the batch"
                )
        mine = tuple(sorted(rows_of[jax.process_index()]))
        return blocks.index(mine), len(blocks)

    def shard_batch(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global, batch-sharded jax.Arrays from this process's numpy rows.

        Each process passes its own `[local_batch, ...]` rows (the shard named by
        `data_shard_info`); the global batch is `local_batch * num_shards`.
        """
        _, num_shards = self.data_shard_info()
        out = {}
        for name, local in host_batch.items():
            local = np.asarray(local)
            global_shape = (local.shape[0] * num_shards,) + local.shape[1:]
            if global_shape[0] % self.num_batch_shards:
                raise ValueError(
                    f"Feature {name!r}: global batch {global_shape[0]} is not divisible by the "
                    f"{self.num_batch_shards} batch shards of {self}; choose a batch size that is "
                    f"a multiple of {self.num_batch_shards}"
                )
            out[name] = jax.make_array_from_process_local_data(
                self.batch_sharding(local.ndim), local, global_shape
            )
        return out

    # ----------------------------------------------------------------- reporting
    def sharding_table(self, tree_of_shapes: Any, shardings: Any, logical_axes: Any = None) -> str:
        """A plain-text table: path, shape, dtype, logical axes, mesh spec, per-device shape.

        `tree_of_shapes` may be the boxed `abstract_params` (logical axes read from the boxes)
        or any tree of objects with `.shape`; `logical_axes` optionally supplies them.
        """
        if logical_axes is None:
            logical_axes = _logical_axes_or_none(tree_of_shapes)
        shapes = _strip_boxes(tree_of_shapes)
        flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
        flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
        flat_logical = (
            jax.tree.leaves(
                logical_axes, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None
            )
            if logical_axes is not None
            else [None] * len(flat_shapes)
        )
        rows = [("parameter", "shape", "dtype", "logical axes", "mesh spec", "per device")]
        total = per_device_total = 0
        for (path, leaf), sharding, logical in zip(flat_shapes, flat_shardings, flat_logical):
            shard_shape = sharding.shard_shape(tuple(leaf.shape))
            total += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
            per_device_total += math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize
            rows.append(
                (
                    jax.tree_util.keystr(path, simple=True, separator="/"),
                    str(tuple(leaf.shape)),
                    str(np.dtype(leaf.dtype)),
                    "-" if logical is None else str(tuple(logical)),
                    str(tuple(sharding.spec)),
                    str(shard_shape),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"{len(rows) - 1} arrays, {total / 2**20:.2f} MiB in total, "
            f"{per_device_total / 2**20:.2f} MiB per device on mesh "
            f"{dict(self.mesh.shape)} with rules '{self.rules_name}'"
        )
        return "\n".join(lines)


class PartitionedFunction:
    """A jitted function whose call, `.trace`, `.lower` and `.eval_shape` enter its
    partitioner's mesh and logical rules (so constraints inside it are live)."""

    def __init__(self, jitted: Any, partitioner: Partitioner) -> None:
        self._jitted = jitted
        self.partitioner = partitioner

    def __call__(self, *args: Any) -> Any:
        with self.partitioner.activate():
            return self._jitted(*args)

    def trace(self, *args: Any) -> Any:
        """`jax.jit(...).trace` under the mesh and rules."""
        with self.partitioner.activate():
            return self._jitted.trace(*args)

    def lower(self, *args: Any) -> Any:
        """`jax.jit(...).lower` under the mesh and rules."""
        with self.partitioner.activate():
            return self._jitted.lower(*args)

    def eval_shape(self, *args: Any) -> Any:
        """`jax.jit(...).eval_shape` under the mesh and rules."""
        with self.partitioner.activate():
            return self._jitted.eval_shape(*args)


def _strip_boxes(tree: Any) -> Any:
    """The values inside flax `Partitioned` boxes (unlike `nn.unbox`, adds no constraints)."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def _logical_axes_or_none(tree: Any) -> Any:
    has_boxes = any(
        isinstance(x, nn.Partitioned)
        for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    )
    return nn.get_partition_spec(tree) if has_boxes else None
