"""Join the processes of a multi-process job (`jax.distributed`) so that a lost process stops it.

On a pod slice the orchestrator restarts a job only once all of its processes have exited, so a
process whose peer died must not wait in a collective for ever. Left to itself, JAX 0.10 aborts
the survivors from a C++ thread 100 s after the loss (SIGABRT, exit 134, a stack trace and no
word of ours). `join` sets the distributed runtime's timeouts and starts a `PeerWatch`
(`alexatm_jax.peer_watch`): every surviving process prints one line naming the lost process and
exits 1 (`EXIT_PEER_LOST`) about `heartbeat_s` after the loss; an in-flight checkpoint save is
abandoned as a temporary directory that restore ignores. `leave` tells the others how this
process ended: a failure stops them within seconds, a normal end is no loss. The one case left to
JAX: when process 0 (the coordination service) dies, JAX aborts the others within a second.

The timeouts (seconds; alexatm-train flags, docs/scale_out.md#when-a-process-dies):
- `initialization_s` (300): how long each process waits for all `num_processes` to join at
  start; a process that never joins makes the others exit 1 after this long, naming the
  coordinator. 300 s leaves room for 32-64 TPU hosts started over ssh, each importing
  TensorFlow.
- `heartbeat_s` (30): a process whose heartbeat has not changed for this long is lost. The
  heartbeats come from threads that JAX's compiles, steps and collectives leave running, so a
  long compile does not trip it; 30 s keeps the exit after a `kill -9` under a minute even
  when the survivor notices late. JAX's own detector gets twice this (`JAX_TIMEOUT_FACTOR`)
  and aborts the process only if the watch could not run.
- `shutdown_s` (60): how long a process that ends waits at JAX's shutdown barrier for the
  others (JAX's default is 300 s).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

from alexatm_jax.peer_watch import DONE, FAILED, PeerWatch, exit_now, exit_on_lost

EXIT_PEER_LOST = 1
DEFAULT_INITIALIZATION_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
DEFAULT_SHUTDOWN_TIMEOUT_S = 60
JAX_TIMEOUT_FACTOR = 2  # JAX's own timeouts: backstops behind ours


@dataclasses.dataclass(frozen=True)
class JobTimeouts:
    """The distributed runtime's timeouts, in whole seconds (see the module docstring)."""

    initialization_s: int = DEFAULT_INITIALIZATION_TIMEOUT_S
    heartbeat_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S
    shutdown_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S

    def problem(self) -> str | None:
        """Why these timeouts are unusable (each must be >= 1 s), or None."""
        for name, value in dataclasses.asdict(self).items():
            if value < 1:
                return f"the {name[: -len('_s')]} timeout must be >= 1 s, got {value}"
        return None


def join(
    prog: str,
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    timeouts: JobTimeouts,
) -> PeerWatch:
    """`jax.distributed.initialize` with `timeouts`, then a PeerWatch that makes this process
    exit 1 with one line (from `prog`) when another one is lost; returns the watch (for
    `leave`).

    All three coordinates None: detected by JAX (Cloud TPU). When the job has not assembled
    within `timeouts.initialization_s`, prints one line naming the coordinator and exits 1 (JAX
    itself would abort the process a while later).
    """
    import jax
    from jax._src import distributed as jax_distributed  # the runtime client: no public handle

    coordinator = coordinator_address or "(detected)"
    deadline = threading.Timer(
        timeouts.initialization_s,
        exit_now,
        (
            f"{prog}: error: process {process_id if process_id is not None else '(detected)'}: "
            f"the job did not assemble within {timeouts.initialization_s} s: not all "
            f"{num_processes or 'the'} processes joined the coordinator (process 0) at "
            f"{coordinator}. Start every process with the same --coordinator_address and "
            f"--num_processes, or give slow hosts more time with --initialization_timeout_s",
            EXIT_PEER_LOST,
        ),
    )
    deadline.daemon = True
    deadline.start()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=JAX_TIMEOUT_FACTOR * timeouts.initialization_s,
            heartbeat_timeout_seconds=JAX_TIMEOUT_FACTOR * timeouts.heartbeat_s,
            shutdown_timeout_seconds=timeouts.shutdown_s,
        )
    finally:
        deadline.cancel()
    state = jax_distributed.global_state
    watch = PeerWatch(
        state.client,
        state.process_id,
        state.num_processes,
        timeouts.heartbeat_s,
        exit_on_lost(prog, state.process_id, EXIT_PEER_LOST),
    )
    watch.start()
    return watch


def leave(watch: PeerWatch, code: int) -> int:
    """Tell the other processes how this one ended (exit `code`) and return `code`.

    A failure (code != 0) ends this process at once instead (JAX's shutdown barrier would wait
    for the others, which stop on their own when they read the failure). Process 0 first waits
    `watch.grace_s` for them to read it: its exit takes the coordination service down, and JAX
    aborts a process that is still connected to it (exit 134) rather than let it exit itself.
    """
    if code == 0:
        watch.end(DONE)
        return code
    watch.end(f"{FAILED}exit {code}; its log names the error")
    if watch.process_id == 0:
        time.sleep(watch.grace_s)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
