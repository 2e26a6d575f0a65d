"""One emulated JAX CPU device per core, so that a CPU-only run uses every core.

XLA:CPU runs each matmul on one core (it runs independent ops side by side, but a train step
is mostly a chain of dependent ops). Split into one device per core, data-parallel, the step
keeps every core busy. `use_cpu_devices()` must run before the first JAX computation (it sets
`jax_num_cpu_devices`, which only the first backend initialisation reads); `alexatm-train`,
`alexatm-demo` and the benchmarks call it at start-up.
"""

from __future__ import annotations

import glob
import os

NUM_CPU_DEVICES_ENV = "ALEXATM_NUM_CPU_DEVICES"
GOOGLE_PCI_VENDOR = "0x1ae0"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def accelerator_present() -> bool:
    """True when JAX will (probably) pick a GPU or TPU: JAX_PLATFORMS names one, or an NVIDIA,
    AMD or TPU device node / PCI device exists. Checked without initialising JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return any(p.strip() not in ("", "cpu") for p in platforms.split(","))
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or glob.glob("/dev/accel*"):
        return True
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_file, encoding="ascii") as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def default_num_cpu_devices() -> int:
    """$ALEXATM_NUM_CPU_DEVICES if set, else one device per available core on a machine
    without an accelerator, else 1."""
    value = os.environ.get(NUM_CPU_DEVICES_ENV)
    if value:
        try:
            number = int(value)
        except ValueError as error:
            raise ValueError(f"${NUM_CPU_DEVICES_ENV} must be an integer, got {value!r}") from error
        if number < 1:
            raise ValueError(f"${NUM_CPU_DEVICES_ENV} must be >= 1, got {number}")
        return number
    return 1 if accelerator_present() else available_cores()


def use_cpu_devices(number: int | None = None) -> int:
    """Sets `jax_num_cpu_devices` to `number` (default: `default_num_cpu_devices()`); returns it.

    Call before any JAX computation; afterwards the setting has no effect on the running
    backend, so the value actually in use is `len(jax.devices("cpu"))`.
    """
    import jax

    number = default_num_cpu_devices() if number is None else number
    jax.config.update("jax_num_cpu_devices", number)
    return number
