"""Compile-only TPU devices for the tests: libtpu describes a slice that is not there, and the TPU
compiler compiles for it on this CPU. Tests skip, naming why, where libtpu is missing or cannot
load."""

from __future__ import annotations

import functools

import pytest

from alexatm_jax import tpu_topology


@functools.lru_cache(maxsize=4)
def devices_or_reason(name: str, num_slices: int = 1) -> tuple[list, str | None]:
    """(the compile-only devices of `num_slices` slices of TPU `name`, None), or ([], why not)."""
    problem = tpu_topology.libtpu_problem()
    if problem:
        return [], problem
    target = tpu_topology.parse_tpu_target(name)
    tpu_topology.prepare_compile_only_environment(target)
    try:
        return tpu_topology.topology_devices(target, num_slices), None
    except RuntimeError as error:
        return [], str(error)


def devices_or_skip(name: str, num_slices: int = 1) -> list:
    """The compile-only devices, or a pytest skip naming why libtpu is unusable here."""
    found, reason = devices_or_reason(name, num_slices)
    if reason:
        pytest.skip(f"the TPU compiler is unavailable: {reason}")
    return found
