"""Graceful stop on SIGTERM / SIGINT: finish the current step, checkpoint, exit 0.

A cluster scheduler preempts a job with SIGTERM (then SIGKILL after a grace period); a user presses
Ctrl-C (SIGINT). Both only set a flag here; the training loop polls it between steps. A second
SIGINT while the flag is already set restores the default handler and raises KeyboardInterrupt, so
a stuck job can still be interrupted from the keyboard. With several JAX processes the flag is
or-ed across processes so that every host stops at the same step and joins the same save.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import jax
import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installs handlers for SIGTERM/SIGINT and remembers whether a stop was requested.

    Use as a context manager: the previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self._requested = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._requested.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self._requested.set()

    def requested_locally(self) -> bool:
        """True once this process received a stop signal."""
        return self._requested.is_set()

    def should_stop(self) -> bool:
        """True when any process received a stop signal (a collective call with >1 process)."""
        local = self._requested.is_set()
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([local], dtype=np.int32))
        return bool(np.asarray(flags).any())
