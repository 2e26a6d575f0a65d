"""alexatm_jax/host.py: glibc keeps freed host memory for reuse (no page faults when a large
block is allocated again), JAX's synchronous CPU dispatch, the opt-out, and the core count."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from alexatm_jax.host import available_cores, host_malloc_mode

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 256 MiB block twice, as XLA:CPU does with a step's temporaries,
# and prints the minor page faults of the second time.
_REALLOCATE = textwrap.dedent(
    """
    import ctypes, resource
    import alexatm_jax
    from alexatm_jax.host import host_malloc_mode
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 256 << 20
    def touch_and_free():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
    touch_and_free()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch_and_free()
    print(host_malloc_mode(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _reallocate(setting: str | None) -> tuple[str, int, str]:
    env = dict(os.environ)
    env.pop("ALEXATM_JAX_HOST_MALLOC", None)
    if setting is not None:
        env["ALEXATM_JAX_HOST_MALLOC"] = setting
    done = subprocess.run(
        [sys.executable, "-c", _REALLOCATE], env=env, capture_output=True, text=True, check=True
    )
    mode, faults = done.stdout.split()
    return mode, int(faults), done.stderr


@pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's")
def test_freed_memory_is_reused_without_page_faults():
    mode, faults, _ = _reallocate(None)
    assert mode == "retain"
    assert faults < 1000  # the block came back from the heap, already mapped
    mode, faults, _ = _reallocate("system")
    assert mode == "system"
    assert faults > 30_000  # glibc's defaults: mapped afresh, 65,536 pages of 4 KiB


@pytest.mark.skipif(not GLIBC, reason="the check allocates through glibc")
def test_an_unknown_setting_warns_and_keeps_glibcs_defaults():
    mode, _, stderr = _reallocate("tcmalloc")
    assert mode == "system"
    assert "ALEXATM_JAX_HOST_MALLOC='tcmalloc'" in stderr and "'retain'" in stderr


def test_this_process_applied_it_once_at_import():
    """conftest imports alexatm_jax before any JAX computation: glibc keeps freed memory and JAX
    dispatches CPU programs on the calling thread (whose main arena can keep a 3 GiB block)."""
    import jax

    if os.environ.get("ALEXATM_JAX_HOST_MALLOC") == "system" or not GLIBC:
        assert host_malloc_mode() in ("system", "unsupported")
        return
    assert host_malloc_mode() == "retain"
    assert jax.config.read("jax_cpu_enable_async_dispatch") is False


def test_available_cores_follows_the_affinity_mask():
    assert 1 <= available_cores() <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert available_cores() == len(os.sched_getaffinity(0))
