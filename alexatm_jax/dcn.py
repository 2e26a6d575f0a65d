"""Traffic between TPU slices over the data-center network (DCN): what the TPU compiler's cost
model does not price in a multi-slice plan.

A multi-slice mesh lays some axes across slices (`MeshConfig.dcn_*`, by default `replica`). Over
the axes whose slices hold replicated parameters (`replica`, `data`) every step ends with a
gradient all-reduce between slices. The model here: the gradients (float32, 4 bytes a parameter,
the parameters' dtype) are first reduce-scattered over ICI within the slice, so each host of a
data-parallel group holds a distinct 1/hosts_per_group of them; a ring all-reduce over the D
groups then makes each host send 2 (D - 1) / D times its shard over DCN, once per step (after the
gradient accumulation). `fsdp` or `tensor` across slices would add per-layer traffic that this
term does not price: the report warns.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # light to import: alexatm-plan reads DEFAULT_OVERLAP before JAX starts
    from jax.sharding import Mesh

GRADIENT_BYTES_PER_PARAM = 4  # float32 gradients, the parameters' dtype
DATA_PARALLEL_AXES = ("replica", "data")
BACKWARD_SHARE = 2 / 3  # backward = 2x forward FLOPs: 2/3 of a microbatch's time
DEFAULT_OVERLAP = 0.5


@dataclasses.dataclass(frozen=True)
class DcnTraffic:
    """DCN traffic of one train step: slices along each mesh axis, and each host's share."""

    num_slices: int
    num_hosts: int
    slices_per_axis: dict[str, int]
    bytes_sent_per_host: float
    gbps_per_host: float | None  # None: no figure known (then there must be no traffic)

    @property
    def data_parallel_groups(self) -> int:
        """D: how many slice groups hold the same parameters (the all-reduce's ring size)."""
        return math.prod(self.slices_per_axis[axis] for axis in DATA_PARALLEL_AXES)

    @property
    def unpriced_axes(self) -> tuple[str, ...]:
        """Axes across slices whose traffic (weight gathers, activations) is not priced."""
        return tuple(
            axis
            for axis, n in self.slices_per_axis.items()
            if n > 1 and axis not in DATA_PARALLEL_AXES
        )

    @property
    def seconds(self) -> float:
        """Seconds each host spends sending its bytes at `gbps_per_host` (10^9 bit/s)."""
        if not self.bytes_sent_per_host:
            return 0.0
        if self.gbps_per_host is None:
            raise ValueError("DCN traffic without a bandwidth: give gbps_per_host")
        return self.bytes_sent_per_host * 8 / (self.gbps_per_host * 1e9)

    def exposed_seconds(self, step_seconds: float, microbatches: int, overlap: float) -> float:
        """The DCN seconds not hidden behind the last microbatch's backward pass, of which
        `overlap` (a fraction in [0, 1]) can run at the same time as the all-reduce."""
        backward = BACKWARD_SHARE * step_seconds / microbatches
        return max(0.0, self.seconds - overlap * backward)


def slices_per_axis(mesh: Mesh) -> dict[str, int]:
    """How many distinct slices (`slice_index`) each mesh axis passes through."""
    array = mesh.devices
    counts = {}
    for position, axis in enumerate(mesh.axis_names):
        line = array[tuple(slice(None) if i == position else 0 for i in range(array.ndim))]
        counts[str(axis)] = len({getattr(d, "slice_index", 0) for d in line.flat})
    return counts


def gradient_allreduce_traffic(
    mesh: Mesh, num_params: int, gbps_per_host: float | None
) -> DcnTraffic:
    """The DCN bytes each host sends per step for the gradient all-reduce across slices of
    `mesh` (see the module docstring), at `gbps_per_host`."""
    devices: list[Any] = list(mesh.devices.flat)
    per_axis = slices_per_axis(mesh)
    groups = math.prod(per_axis[axis] for axis in DATA_PARALLEL_AXES)
    num_hosts = len({d.process_index for d in devices})
    hosts_per_group = num_hosts // groups
    shard = GRADIENT_BYTES_PER_PARAM * num_params / hosts_per_group
    return DcnTraffic(
        num_slices=len({getattr(d, "slice_index", 0) for d in devices}),
        num_hosts=num_hosts,
        slices_per_axis=per_axis,
        bytes_sent_per_host=2 * (groups - 1) / groups * shard,
        gbps_per_host=gbps_per_host,
    )
