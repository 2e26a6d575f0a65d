"""The judge of `alexatm_jax.peer_watch` and the timeout flags of alexatm-train, without JAX.

The real processes (a kill -9, a process that never joins) are in tests/test_dead_host.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from alexatm_jax.cli import job_arguments
from alexatm_jax.cli import train as train_cli
from alexatm_jax.multiprocess import JobTimeouts
from alexatm_jax.peer_watch import DONE, FAILED, KEY_PREFIX, PeerWatch

TIMEOUT_S = 30.0


def _watch(process_id: int, num_processes: int = 3) -> PeerWatch:
    watch = PeerWatch(None, process_id, num_processes, TIMEOUT_S, on_lost=print)
    watch.record([], now=0.0)
    watch.changed = dict.fromkeys(watch.changed, 0.0)
    return watch


def _beats(**counts: int | str) -> list[tuple[str, str]]:
    return [(f"{KEY_PREFIX}{process[1:]}", str(count)) for process, count in counts.items()]


def test_a_process_whose_heartbeat_stops_changing_is_lost_after_the_timeout():
    watch = _watch(0)
    assert watch.lost(TIMEOUT_S - 1) is None
    watch.record(_beats(p0=5, p1=1, p2=1), now=10.0)
    watch.record(_beats(p0=6, p1=2, p2=1), now=20.0)  # process 2's count stays at 1
    assert watch.lost(39.0) is None
    reason = watch.lost(41.0)
    assert reason == ("process 2 sent no heartbeat for 30 s: it died, was killed or is unreachable")
    assert watch.lost(51.0).startswith("process 1, 2 sent no heartbeat")


def test_a_worker_that_cannot_reach_the_coordinator_names_it():
    watch = _watch(1)
    watch.last_error = "UNAVAILABLE: Socket closed"
    assert watch.lost(TIMEOUT_S - 1) is None
    assert watch.lost(TIMEOUT_S + 1) == (
        "the coordinator (process 0) has not answered for 30 s: it died, was killed or is "
        "unreachable (last error: UNAVAILABLE: Socket closed)"
    )


def test_the_coordinator_process_never_judges_itself_unreachable():
    watch = _watch(0, num_processes=2)
    watch.record(_beats(p1=1), now=100.0)
    assert watch.lost(100.0 + TIMEOUT_S - 1) is None


def test_a_finished_process_is_no_loss_and_a_failed_one_is_named_at_once():
    watch = _watch(0)
    watch.record(_beats(p1=DONE, p2=1), now=10.0)
    assert watch.lost(10.0 + TIMEOUT_S + 1) == (
        "process 2 sent no heartbeat for 30 s: it died, was killed or is unreachable"
    )
    watch.record(_beats(p1=DONE, p2=FAILED + "exit 1; its log names the error"), now=12.0)
    assert watch.lost(12.0) == "process 2 failed (exit 1; its log names the error)"


def test_the_timeout_flags_have_documented_defaults_and_refuse_nonsense(monkeypatch, capsys):
    args, _ = train_cli.parse_args(["--gin_file=gin/experiments/smoke_cpu.gin"])
    assert job_arguments.timeouts(args) == JobTimeouts(300, 30, 60)
    monkeypatch.setenv("ALEXATM_HEARTBEAT_TIMEOUT_S", "12")
    args, _ = train_cli.parse_args(["--gin_file=gin/experiments/smoke_cpu.gin"])
    assert job_arguments.timeouts(args).heartbeat_s == 12
    with pytest.raises(SystemExit) as stopped:
        train_cli.parse_args(["--gin_file=x.gin", "--initialization_timeout_s", "0"])
    assert stopped.value.code == 2
    assert "the initialization timeout must be >= 1 s, got 0" in capsys.readouterr().err


def test_a_broken_collective_waits_for_the_judge_to_name_the_lost_process(monkeypatch):
    """A collective that fails because process 1's connection closed is not reported as such:
    the judge names process 1 first (here after its silence passes the timeout)."""
    monkeypatch.setattr("alexatm_jax.peer_watch.JUDGE_INTERVAL_S", 0.01)
    named = []
    watch = PeerWatch(None, 0, 2, timeout_s=0.3, on_lost=named.append)  # no client: judge only
    threading.Thread(target=watch._judge, daemon=True).start()
    broken = RuntimeError(
        "UNKNOWN: Gloo AllGather failed: [pair.cc:547] Connection closed by peer [127.0.0.1]:25478"
    )
    began = time.monotonic()
    watch.blame(broken)
    assert named == ["process 1 sent no heartbeat for 0.3 s: it died, was killed or is unreachable"]
    assert time.monotonic() - began < 0.3 + watch.grace_s
    began = time.monotonic()
    watch.blame(ValueError("a shape mismatch"))  # any other error is reported at once
    assert time.monotonic() - began < 0.05
