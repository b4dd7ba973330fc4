"""Supervisor decisions without processes: hang rule, backoff, who gets killed when."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import pytest

from streamer.pipeline.shm_ring import RingGeometry
from streamer.pipeline.supervisor import (
    RestartPolicy,
    Seat,
    SeatState,
    Supervisor,
    is_hung,
)
from streamer.pipeline.worker import RunnerSpec

S = 1_000_000_000  # ns


def test_idle_worker_is_never_hung() -> None:
    assert not is_hung(100 * S, 0, None, S)


def test_hang_counts_from_the_later_of_heartbeat_and_assignment() -> None:
    # Idle for ages (old heartbeat), got work 0.5 s ago: not hung yet.
    assert not is_hung(100 * S, 1 * S, 100 * S - S // 2, S)
    # Got work 2 s ago, no progress since: hung.
    assert is_hung(100 * S, 1 * S, 98 * S, S)
    # Busy 2 s, but picked up a batch 0.5 s ago: progressing.
    assert not is_hung(100 * S, 100 * S - S // 2, 98 * S, S)


def test_backoff_doubles_up_to_a_cap_and_gives_up() -> None:
    p = RestartPolicy(base_delay_s=0.1, max_delay_s=1.0, max_failed_starts=4)
    assert [p.delay_s(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [p.gives_up(n) for n in range(1, 6)] == [False, False, False, True, True]


class Signals:
    """Stands in for a WorkerProcess: records the signals it would send."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.pid = 999

    def signal(self, sig: int) -> None:
        self.sent.append(sig)


class Events:
    def __init__(self) -> None:
        self.busy: dict[int, int | None] = {}

    def on_ready(self, seat: Seat) -> None: ...
    def on_done(self, seat: Seat) -> None: ...
    def on_lost(self, seat: Seat, reason: str) -> None: ...
    def on_broken(self, reason: str) -> None: ...

    def busy_since_ns(self, seat: Seat) -> int | None:
        return self.busy.get(seat.index)


@pytest.fixture
async def sup() -> AsyncIterator[tuple[Supervisor, Events]]:
    events = Events()
    s = Supervisor(
        RunnerSpec("tests.fakes:make_fake_runner"),
        RingGeometry(1, 1, 1, 1),
        workers=3,
        env_for=lambda i: {},
        events=events,
        heartbeat_timeout_s=1.0,
        start_timeout_s=5.0,
        policy=RestartPolicy(),
    )
    yield s, events
    for seat in s.seats:
        seat.process = None  # stand-ins, nothing to reap
    await s.stop(grace_s=0)
    assert s.seats == []  # segments released


async def test_check_hangs_kills_only_stuck_workers_once(sup: tuple[Supervisor, Events]) -> None:
    s, events = sup
    procs = [Signals() for _ in s.seats]
    for seat, proc in zip(s.seats, procs, strict=True):
        seat.process = proc  # type: ignore[assignment]
        seat.state = SeatState.READY
    now = 100 * S
    events.busy = {0: now - 2 * S, 1: None}  # 0 busy without progress, 1 idle
    s.seats[2].state = SeatState.STARTING
    s.seats[2].started_ns = now - 6 * S  # past the 5 s start timeout
    s.check_hangs(now)
    assert procs[0].sent == [signal.SIGKILL]
    assert procs[1].sent == []
    assert procs[2].sent == [signal.SIGKILL]
    assert "hung" in s.seats[0].kill_reason
    assert "not ready within 5.0s" in s.seats[2].kill_reason
    s.check_hangs(now + S)  # the death path has not run yet: no second kill
    assert procs[0].sent == [signal.SIGKILL] and procs[2].sent == [signal.SIGKILL]
