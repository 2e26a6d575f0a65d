"""The host CPU: the cores this process may use, and keeping freed memory for reuse.

`available_cores()` counts the cores in this process's affinity mask (what `taskset` or a
container allows), not the machine's.

Memory: XLA:CPU allocates each execution's temporaries as one block with `posix_memalign`
(3.0 GiB for the small.gin train step at batch 8 x 256/256) and frees it when the step ends.
glibc served a block that large with a fresh `mmap` and returned it with `munmap`, so every step
page-faulted all of it in again: ~790k faults and 1.2-6 s of kernel time per step on a 2-core VM.

`retain_freed_memory()` keeps the block mapped:
* glibc `mallopt`: no `mmap` for large blocks (`M_MMAP_MAX=0`) and no trimming of the heap's
  top (`M_TRIM_THRESHOLD` = the largest size), so a freed block stays in the heap for reuse;
* JAX's synchronous CPU dispatch (`jax_cpu_enable_async_dispatch=False`): XLA:CPU then runs a
  single-device program, and allocates its temporaries, on the calling thread. glibc serves the
  main thread from its main arena, the only one whose heap can hold a block above 64 MiB;
  asynchronous dispatch allocated it on an XLA worker thread, whose arena has to `mmap` it.
  (Restricting glibc to one arena for all threads did the same, but its lock contention made
  the demo's input pipeline and small steps 25% slower.)

The process's resident memory then stays at its peak, as it would under tcmalloc or jemalloc.
`import alexatm_jax` calls it once; the dispatch setting only applies if JAX's CPU backend has
not started yet, so import alexatm_jax before running JAX computations. Set
`ALEXATM_JAX_HOST_MALLOC=system` to keep glibc's and JAX's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings

ENV_VAR = "ALEXATM_JAX_HOST_MALLOC"

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_state: dict[str, str] = {}


def retain_freed_memory() -> str:
    """Applies the settings above once per process; returns what was done: "retain" (set),
    "system" (ALEXATM_JAX_HOST_MALLOC=system, or an unknown value, which warns), or
    "unsupported" (not Linux with glibc)."""
    if "mode" in _state:
        return _state["mode"]
    choice = os.environ.get(ENV_VAR, "retain").strip().lower()
    if choice not in ("retain", "system"):
        warnings.warn(
            f"{ENV_VAR}={choice!r} is not 'retain' (the default) or 'system'; "
            "keeping glibc's defaults",
            stacklevel=2,
        )
        choice = "system"
    mode = choice
    if choice == "retain":
        mode = "retain" if _set_glibc_options() else "unsupported"
    if mode == "retain":
        import jax

        jax.config.update("jax_cpu_enable_async_dispatch", False)
    _state["mode"] = mode
    return mode


def available_cores() -> int:
    """Cores this process may run on (its affinity mask on Linux, else `os.cpu_count()`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cores_dividing(count: int, sharers: int = 1) -> int:
    """The largest divisor of `count` up to the available cores per sharer (at least 1): how
    many independent parts to cut `count` rows or heads into, one per core."""
    parts = max(1, min(available_cores() // sharers, count))
    while count % parts:
        parts -= 1
    return parts


def host_malloc_mode() -> str:
    """What `retain_freed_memory` did in this process ("not applied" before it ran)."""
    return _state.get("mode", "not applied")


def _set_glibc_options() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt takes an int; glibc stores the trim threshold as a size_t, so -1 is "never trim".
    options = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(
        libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in options
    )
