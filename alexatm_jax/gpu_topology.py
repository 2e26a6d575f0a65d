"""NVIDIA GPU clusters as compile targets: the CUDA PJRT plugin's compile-only devices.

With the CUDA plugin installed (`pip install -e '.[gpu-aot]'`), jax compiles for GPUs that are
not there: `get_topology_desc(platform="cuda", target_config=<GpuTargetConfig text proto>,
topology="1xNODESxGPUS")` describes them from the device figures below (those of XLA's own
H100 SXM spec), and jit(...).lower(...).compile() runs XLA:GPU on the CPU. The GPU compiler has
no cost model (its cost_analysis() is empty): plans get memory, not a step time.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import Any

INSTALL_HINT = (
    "install the CUDA compiler plugin with `pip install -e '.[gpu-aot]'` (the "
    "jax-cuda12-plugin and jax-cuda12-pjrt of the installed jax version)"
)

# XLA's GpuTargetConfig for an H100 SXM 80GB: the fields XLA:GPU's compiler reads.
H100_SXM_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """`nodes` hosts of `gpus_per_node` H100 SXM 80GB (one JAX device per GPU)."""

    name: str
    nodes: int
    gpus_per_node: int
    hbm_gib: float = 80.0
    peak_bf16_tflops: float = 989.0

    has_cost_model = False  # XLA:GPU's cost_analysis() is empty for compile-only devices

    @property
    def num_devices(self) -> int:
        """GPUs in the cluster."""
        return self.nodes * self.gpus_per_node

    def describe(self) -> dict[str, Any]:
        """The target as JSON-ready fields of the plan report."""
        return {
            "topology": f"1x{self.nodes}x{self.gpus_per_node}",
            "cloud_type": self.name,
            "chips": self.num_devices,
            "hbm_gib": self.hbm_gib,
            "peak_bf16_tflops": self.peak_bf16_tflops,
            "cost_model": False,
        }


def parse_gpu_target(name: str) -> GpuTarget | None:
    """A GpuTarget from 'h100-NODESxGPUS' (e.g. 'h100-16x8'); None for any other name."""
    match = re.fullmatch(r"h100-(\d+)x(\d+)", name)
    if not match:
        return None
    nodes, gpus = int(match.group(1)), int(match.group(2))
    if nodes < 1 or not 1 <= gpus <= 8:
        raise ValueError(f"{name}: give h100-NODESxGPUS with 1 to 8 GPUs per node, e.g. h100-16x8")
    return GpuTarget(name, nodes, gpus)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def cuda_plugin_problem() -> str | None:
    """Why XLA:GPU cannot be used here, or None when the CUDA plugin is installed."""
    if not _installed("jax_plugins.xla_cuda12"):
        return f"the CUDA plugin is not installed: {INSTALL_HINT}"
    return None


def cudnn_problem() -> str | None:
    """Why cuDNN attention cannot be compiled here, or None: XLA:GPU loads the cuDNN library
    to build its fused attention graphs, even for compile-only devices."""
    if not _installed("nvidia.cudnn"):
        return "cuDNN not found: pip install nvidia-cudnn-cu12"
    return None


def gpu_devices(target: GpuTarget) -> list[Any]:
    """The cluster's compile-only JAX devices. Raises RuntimeError naming the problem."""
    problem = cuda_plugin_problem()
    if problem:
        raise RuntimeError(problem)
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(
            platform="cuda",
            target_config=H100_SXM_TARGET_CONFIG,
            topology=f"1x{target.nodes}x{target.gpus_per_node}",
        )
    except Exception as error:  # the plugin raises JaxRuntimeError variants
        raise RuntimeError(
            f"the CUDA plugin could not describe {target.name}: {str(error).splitlines()[0]}"
        ) from error
    return list(description.devices)
