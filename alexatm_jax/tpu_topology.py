"""Cloud TPU slices as compile targets: names, chip figures, and libtpu's compile-only devices.

libtpu (the TPU compiler and runtime, `pip install -e '.[tpu-aot]'`) runs on any x86 Linux host.
`jax.experimental.topologies.get_topology_desc` asks it for the devices of a slice that is not
there; jit(...).lower(...).compile() then compiles for them, with the TPU compiler, on the CPU.
Nothing can run on those devices: they exist to plan memory and time ahead of time.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

INSTALL_HINT = (
    "install the TPU compiler with `pip install -e '.[tpu-aot]'` (libtpu, the version "
    "`jax[tpu]` pins for the installed jax)"
)


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures of one TPU generation: HBM in GiB, HBM bandwidth in GB/s (10^9 bytes
    per second), dense bf16 peak in TFLOP/s and the data-center network (DCN) bandwidth in
    Gbit/s where Google documents it (None otherwise)."""

    generation: str
    hbm_gib: float
    peak_bf16_tflops: float
    megacore: bool  # two TensorCores per chip, one JAX device (Cloud TPU names count cores)
    cloud_prefix: str
    hbm_gbytes_per_s: float
    dcn_gbps: float | None = None


# HBM bandwidth per chip, from the system architecture tables of Google's Cloud TPU pages
# (https://cloud.google.com/tpu/docs/v4, /v5p, /v5e, /v6e): v4 "HBM2 capacity and bandwidth:
# 32 GiB, 1200 GBps"; v5p "95GB, 2765 GBps"; v5e "16 GB, 819 GBps"; v6e "HBM bandwidth per
# chip: 1638 GBps".
CHIPS = {
    "v4": Chip("v4", 32.0, 275.0, True, "v4", hbm_gbytes_per_s=1200.0),
    # v5p DCN: "Data center network (DCN) bandwidth per chip (Gbps): 50",
    # https://cloud.google.com/tpu/docs/v5p (system architecture table).
    "v5p": Chip("v5p", 95.0, 459.0, True, "v5p", hbm_gbytes_per_s=2765.0, dcn_gbps=50.0),
    "v5e": Chip("v5e", 16.0, 197.0, False, "v5litepod", hbm_gbytes_per_s=819.0),
    "v6e": Chip("v6e", 32.0, 918.0, False, "v6e", hbm_gbytes_per_s=1638.0),
}
_CLOUD_PREFIXES = {chip.cloud_prefix: name for name, chip in CHIPS.items()}


@dataclasses.dataclass(frozen=True)
class TpuTarget:
    """A TPU slice to compile for: its chip and its torus shape (chips along x, y[, z])."""

    name: str
    chip: Chip
    shape: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        """Chips in the slice, = JAX devices (one per chip on every generation here)."""
        return math.prod(self.shape)

    has_cost_model = True  # the TPU compiler's cost_analysis() gives optimal_seconds

    @property
    def hbm_gib(self) -> float:
        """HBM of one chip."""
        return self.chip.hbm_gib

    @property
    def peak_bf16_tflops(self) -> float:
        """Dense bf16 peak of one chip."""
        return self.chip.peak_bf16_tflops

    def describe(self) -> dict[str, Any]:
        """The target as JSON-ready fields of the plan report."""
        return {
            "topology": self.topology_name,
            "cloud_type": self.cloud_type,
            "chips": self.num_chips,
            "hbm_gib": self.hbm_gib,
            "peak_bf16_tflops": self.peak_bf16_tflops,
            "cost_model": True,
        }

    @property
    def topology_name(self) -> str:
        """libtpu's name for it, e.g. 'v5p:4x4x8'."""
        return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def cloud_type(self) -> str:
        """The Cloud TPU accelerator type, e.g. 'v5p-256' (cores for v4/v5p, chips otherwise)."""
        count = self.num_chips * (2 if self.chip.megacore else 1)
        return f"{self.chip.cloud_prefix}-{count}"


def _cube_shape(chips: int) -> tuple[int, int, int]:
    """The 3-D torus of a v4 / v5p slice of `chips` chips: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4,
    4x4x8, ... (the smallest dimension doubles first)."""
    if chips < 4 or chips & (chips - 1):
        raise ValueError(f"a v4/v5p slice has a power-of-two number of chips >= 4, got {chips}")
    shape = [1, 2, 2]
    while math.prod(shape) < chips:
        shape[0] *= 2
        shape.sort()
    return (2, 2, 1) if shape[0] == 1 else (shape[0], shape[1], shape[2])


def _square_shape(chips: int) -> tuple[int, int]:
    """The 2-D torus of a v5e / v6e slice: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16."""
    if chips not in (1, 4, 8, 16, 32, 64, 128, 256):
        raise ValueError(f"a v5e/v6e slice has 1, 4, 8, ..., 256 chips, got {chips}")
    if chips == 1:
        return (1, 1)
    side = 2 ** (int(math.log2(chips)) // 2)
    return (side, chips // side)


def parse_tpu_target(name: str) -> TpuTarget:
    """A TpuTarget from a Cloud TPU type ('v5p-256', 'v4-512', 'v5litepod-16', 'v6e-8') or a
    topology ('v5p:4x4x8', 'v5e:4x4'). Raises ValueError naming the accepted forms."""
    cloud = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name)
    topology = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", name)
    if cloud:
        generation = _CLOUD_PREFIXES.get(cloud.group(1), cloud.group(1))
        chip = CHIPS[generation]
        count = int(cloud.group(2))
        if chip.megacore:
            if count % 2:
                raise ValueError(f"{name}: {generation} types count TensorCores, 2 per chip")
            shape: tuple[int, ...] = _cube_shape(count // 2)
        else:
            shape = _square_shape(count)
        return TpuTarget(name, chip, shape)
    if topology:
        chip = CHIPS[topology.group(1)]
        shape = tuple(int(n) for n in topology.group(2).split("x"))
        if len(shape) != (3 if chip.megacore else 2):
            raise ValueError(
                f"{name}: a {chip.generation} topology has "
                f"{3 if chip.megacore else 2} dimensions, e.g. "
                f"{'v5p:2x2x1' if chip.megacore else 'v5e:2x2'}"
            )
        return TpuTarget(name, chip, shape)
    raise ValueError(
        f"unknown TPU slice {name!r}: give a Cloud TPU type (v4-8 ... v4-4096, "
        "v5p-8 ... v5p-12288, v5litepod-1 ... v5litepod-256, v6e-1 ... v6e-256) or a "
        "topology such as v5p:4x4x8 or v5e:4x4"
    )


def libtpu_problem() -> str | None:
    """Why the TPU compiler cannot be used here, or None when libtpu is installed."""
    if importlib.util.find_spec("libtpu") is None:
        return f"libtpu is not installed: {INSTALL_HINT}"
    return None


def prepare_compile_only_environment(target: TpuTarget) -> None:
    """Environment for loading libtpu on a machine without TPUs, set before JAX starts: no
    cloud metadata queries, a one-host worker list (no hostname warnings), no device lock."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.cloud_type)
    # Compile-only devices never touch a chip; let concurrent planners (and tests) load libtpu.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(target: TpuTarget, num_slices: int = 1) -> list[Any]:
    """The compile-only JAX devices (one per chip) of `num_slices` slices of `target`, each
    with its `slice_index`. Raises RuntimeError, with the install hint, when libtpu is missing
    or cannot load."""
    problem = libtpu_problem()
    if problem:
        raise RuntimeError(problem)
    from jax.experimental import topologies

    bounds = tuple(min(2, n) for n in target.shape[:2]) + (1,)
    kwargs: dict[str, Any] = {"chips_per_host_bounds": bounds, "num_slices": num_slices}
    if target.chip.megacore:
        kwargs["chip_config_name"] = "megacore"
    name = target.topology_name + (f" x {num_slices} slices" if num_slices > 1 else "")
    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=target.topology_name, **kwargs
        )
    except Exception as error:  # libtpu raises JaxRuntimeError / RuntimeError variants
        raise RuntimeError(
            f"libtpu could not describe {name}: {str(error).splitlines()[0]} ({INSTALL_HINT})"
        ) from error
    return list(description.devices)
