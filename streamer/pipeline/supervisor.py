"""Worker lifecycle: spawn, ready handshake, death and hang detection, restart with backoff.

The supervisor owns processes and segments, not batches: the executor tells it when a
seat is busy (`busy_since_ns`) and it tells the executor when a seat became ready,
has results to read, or lost its process (so the executor can re-dispatch).

- Death: each process's `sentinel` fd is registered with the event loop.
- Hang: a monitor task compares the worker's heartbeat (a progress stamp in its
  segment) with the oldest batch assigned to it; no progress for `heartbeat_timeout_s`
  while busy -> SIGKILL, then the death path runs.
- Restart storms: exponential backoff per seat, growing with deaths since the seat
  last completed a batch. A seat whose worker fails to *start* (load its runner)
  `max_failed_starts` times in a row gives up; when every seat has given up the
  executor is told it is broken, so callers get an error, never a hang. Deaths while
  running batches never make a seat give up: a poison batch is the executor's
  `max_batch_crashes` business, and must not take the whole executor down with it.
- Parent death: every worker holds the read end of one death pipe; the parent holds
  the only write end, so the kernel closes it however the parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any, Protocol

from streamer.pipeline.executor_errors import WorkerStartError
from streamer.pipeline.shm_ring import RingGeometry, WorkerRing, time_ns
from streamer.pipeline.worker import LOAD_ERROR, READY, RunnerSpec, WorkerArgs, worker_main

log = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")


def is_hung(now_ns: int, heartbeat_ns: int, busy_since_ns: int | None, timeout_ns: int) -> bool:
    """True when a busy worker has shown no progress for longer than the timeout.

    Progress counts from the later of its last heartbeat and the moment it got work, so
    a worker that sat idle (old heartbeat) is not blamed the instant a batch arrives.
    """
    if busy_since_ns is None:
        return False
    return now_ns - max(heartbeat_ns, busy_since_ns) > timeout_ns


def _summary(reason: str) -> str:
    # A load failure's reason is a whole traceback; its last line names the error.
    lines = [line for line in reason.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else reason)[:300]


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts of one seat and when to stop trying."""

    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    max_failed_starts: int = 5
    stable_after_s: float = 10.0  # a worker that lived this long was not a start failure

    def delay_s(self, failures: int) -> float:
        """Wait before the restart after the `failures`-th consecutive failure (>= 1)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(0, failures - 1))

    def gives_up(self, failed_starts: int) -> bool:
        """Whether a seat whose worker failed to start this many times in a row stops."""
        return failed_starts >= self.max_failed_starts


@contextlib.contextmanager
def _environ(overrides: dict[str, str]) -> Iterator[None]:
    # Spawned children inherit os.environ at exec time, i.e. before the child imports
    # anything (even the parent's __main__ module, which may import torch). Setting the
    # thread/device variables here is the only way they are in place for that import.
    # No await happens inside, so other coroutines never see the temporary values.
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkerProcess:
    """One spawned worker and the parent's ends of its pipes; replaced whole on restart."""

    def __init__(self, args: WorkerArgs, death_r: Connection) -> None:
        wake_r, self._wake_w = _SPAWN.Pipe(duplex=False)
        self._done_r, done_w = _SPAWN.Pipe(duplex=False)
        self.ready_r, ready_w = _SPAWN.Pipe(duplex=False)
        self._child_ends = (wake_r, done_w, ready_w)
        self.args = args
        self.proc = _SPAWN.Process(
            target=worker_main,
            args=(args, wake_r, done_w, ready_w, death_r),
            name=f"streamer-worker-{args.index}.{args.generation}",
            # Not daemonic: a daemonic process may not start children, and a device
            # runtime or compiler inside the runner may need to. Exit is covered anyway:
            # close(), the atexit hook, and the death pipe.
            daemon=False,
        )

    def start(self) -> None:
        """Spawn the process, then drop the parent's copies of the child's pipe ends.

        Closing them is what makes the completion and ready pipes reach EOF when the
        child dies.
        """
        try:
            with _environ(self.args.env):
                self.proc.start()
        finally:
            for conn in self._child_ends:
                conn.close()

    @property
    def pid(self) -> int | None:
        """OS process id (None before start)."""
        return self.proc.pid

    @property
    def sentinel(self) -> int:
        """Fd that becomes readable when the process exits."""
        return self.proc.sentinel

    @property
    def done_fd(self) -> int:
        """Completion pipe (read end): one byte per finished slot."""
        return self._done_r.fileno()

    def wake(self, slot: int) -> bool:
        """Tell the worker slot `slot` holds a batch; False if the worker is gone."""
        try:
            os.write(self._wake_w.fileno(), bytes((slot,)))
        except (BrokenPipeError, OSError):
            return False
        return True

    def signal(self, sig: int) -> None:
        """Send a signal if the process still exists."""
        pid = self.proc.pid
        if pid is not None and self.proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def close(self) -> None:
        """Close the parent's pipe ends (the wake-up EOF also tells a live worker to exit)."""
        for conn in (self._wake_w, self._done_r, self.ready_r):
            conn.close()


class SeatState(Enum):
    """Where a seat (worker index) is in its lifecycle."""

    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    GAVE_UP = "gave_up"
    STOPPED = "stopped"


@dataclass(eq=False)
class Seat:
    """One worker position: its segment (kept across restarts) and current process."""

    index: int
    ring: WorkerRing
    state: SeatState = SeatState.STOPPED
    process: WorkerProcess | None = None
    generation: int = 0
    failures: int = 0  # deaths since the last completed batch: drives the backoff
    failed_starts: int = 0  # consecutive deaths before ready: decides giving up
    started_ns: int = 0
    last_error: str = ""
    kill_reason: str = ""
    runner_info: dict[str, Any] = field(default_factory=dict)  # the worker's ready report
    restart_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class SupervisorEvents(Protocol):
    """What the supervisor tells its owner (the executor) and asks of it."""

    def on_ready(self, seat: Seat) -> None:
        """The seat's worker can take batches."""

    def on_done(self, seat: Seat) -> None:
        """The seat's completion pipe is readable."""

    def on_lost(self, seat: Seat, reason: str) -> None:
        """The seat's process is gone; harvest finished slots, re-dispatch the rest."""

    def on_broken(self, reason: str) -> None:
        """Every seat gave up: fail what is queued and refuse new batches."""

    def busy_since_ns(self, seat: Seat) -> int | None:
        """When the oldest batch now assigned to the seat was dispatched (None if idle)."""


class Supervisor:
    """Keeps `workers` worker processes alive around their shared-memory segments."""

    def __init__(
        self,
        spec: RunnerSpec,
        geometry: RingGeometry,
        *,
        workers: int,
        env_for: Callable[[int], dict[str, str]],
        events: SupervisorEvents,
        heartbeat_timeout_s: float,
        start_timeout_s: float,
        policy: RestartPolicy,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._spec = spec
        self._env_for = env_for
        self._events = events
        self._heartbeat_timeout_ns = int(heartbeat_timeout_s * 1e9)
        self._start_timeout_ns = int(start_timeout_s * 1e9)
        self._start_timeout_s = start_timeout_s
        self._policy = policy
        self.restarts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._start_waiter: asyncio.Future[None] | None = None
        self._stopping = False
        self._death_r, self._death_w = _SPAWN.Pipe(duplex=False)
        self.seats: list[Seat] = []
        try:
            for i in range(workers):
                self.seats.append(Seat(i, WorkerRing.create(geometry, f"w{i}")))
        except BaseException:
            self._release_rings()
            raise

    # -- start / stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every worker and wait until all are ready; raise WorkerStartError if one fails."""
        self._loop = asyncio.get_running_loop()
        self._start_waiter = self._loop.create_future()
        try:
            for seat in self.seats:
                self._spawn(seat)
            self._monitor = self._loop.create_task(self._watch(), name="worker-monitor")
            # The monitor kills a worker that is not ready by start_timeout_s; this outer
            # bound only matters if that path itself fails.
            await asyncio.wait_for(self._start_waiter, self._start_timeout_s + 30)
        except BaseException:
            await self.stop()
            raise
        finally:
            self._start_waiter = None

    async def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM every worker, SIGKILL what is left after `grace_s`, unlink segments."""
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        procs = self._detach_all()
        for wp in procs:
            wp.signal(signal.SIGTERM)
        deadline = time_ns() + int(grace_s * 1e9)
        while any(wp.proc.is_alive() for wp in procs) and time_ns() < deadline:
            await asyncio.sleep(0.01)
        self._reap(procs)

    def stop_now(self) -> None:
        """Synchronous last resort (atexit): SIGKILL every worker and unlink segments."""
        self._stopping = True
        if self._monitor is not None:
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                self._monitor.cancel()
        self._reap(self._detach_all())

    def _detach_all(self) -> list[WorkerProcess]:
        procs = []
        for seat in self.seats:
            if seat.restart_timer is not None:
                seat.restart_timer.cancel()
                seat.restart_timer = None
            if seat.process is not None:
                self._unwatch(seat.process)
                procs.append(seat.process)
                seat.process = None
            seat.state = SeatState.STOPPED
        return procs

    def _reap(self, procs: list[WorkerProcess]) -> None:
        for wp in procs:
            wp.signal(signal.SIGKILL)
        for wp in procs:
            wp.proc.join(timeout=5)
            wp.close()
        self._release_rings()
        for conn in (self._death_r, self._death_w):
            conn.close()

    def _release_rings(self) -> None:
        for seat in self.seats:
            seat.ring.unlink()
            seat.ring.close()
        self.seats = []

    # -- spawn and handshake -------------------------------------------------------------

    def _spawn(self, seat: Seat) -> None:
        assert self._loop is not None
        seat.restart_timer = None
        seat.generation += 1
        seat.kill_reason = ""
        seat.last_error = ""
        seat.ring.reset()
        args = WorkerArgs(
            index=seat.index,
            generation=seat.generation,
            spec=self._spec,
            ring=seat.ring.handle,
            env=self._env_for(seat.index),
        )
        wp = WorkerProcess(args, self._death_r)
        try:
            wp.start()
        except Exception as exc:  # e.g. fork/exec failed: out of memory, fd limit
            wp.close()
            if self._start_waiter is not None:
                raise WorkerStartError(f"could not spawn worker {seat.index}: {exc!r}") from exc
            seat.state = SeatState.BACKOFF
            seat.failed_starts += 1
            self._failed(seat, f"could not spawn: {exc!r}")
            return
        seat.process = wp
        seat.state = SeatState.STARTING
        seat.started_ns = time_ns()
        self._loop.add_reader(wp.sentinel, self._on_exit, seat, wp)
        self._loop.add_reader(wp.ready_r.fileno(), self._on_ready_message, seat, wp)

    def _unwatch(self, wp: WorkerProcess) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        # Always before wp.close(): a closed fd number can be reused by someone else's
        # registration, which remove_reader would then silently drop.
        self._loop.remove_reader(wp.sentinel)
        self._loop.remove_reader(wp.ready_r.fileno())
        self._loop.remove_reader(wp.done_fd)

    def _on_ready_message(self, seat: Seat, wp: WorkerProcess) -> None:
        assert self._loop is not None
        self._loop.remove_reader(wp.ready_r.fileno())
        try:
            message = wp.ready_r.recv_bytes()
        except (EOFError, OSError):
            message = b""  # died before reporting; the sentinel tells the rest
        if seat.process is not wp:
            return
        if message.startswith(READY):
            with contextlib.suppress(ValueError):
                seat.runner_info = json.loads(message[len(READY) :] or b"{}")
            seat.state = SeatState.READY
            self._loop.add_reader(wp.done_fd, self._events.on_done, seat)
            log.info("worker %d ready (pid %s, generation %d)", seat.index, wp.pid, seat.generation)
            self._events.on_ready(seat)
            self._check_started()
        elif message.startswith(LOAD_ERROR):
            seat.last_error = message[len(LOAD_ERROR) :].decode("utf-8", "replace").strip()

    @staticmethod
    def _drain_ready(seat: Seat, wp: WorkerProcess) -> None:
        with contextlib.suppress(EOFError, OSError):
            if wp.ready_r.poll(0):
                message = wp.ready_r.recv_bytes()
                if message.startswith(LOAD_ERROR):
                    seat.last_error = message[len(LOAD_ERROR) :].decode("utf-8", "replace")
                    seat.last_error = seat.last_error.strip()

    def _check_started(self) -> None:
        waiter = self._start_waiter
        ready = all(s.state is SeatState.READY for s in self.seats)
        if waiter is not None and not waiter.done() and ready:
            waiter.set_result(None)

    def stop_reading_done(self, seat: Seat) -> None:
        """The completion pipe hit EOF (worker exiting): stop polling it until the sentinel."""
        if self._loop is not None and seat.process is not None:
            self._loop.remove_reader(seat.process.done_fd)

    # -- death, hangs, restarts ----------------------------------------------------------

    def _on_exit(self, seat: Seat, wp: WorkerProcess) -> None:
        if seat.process is not wp:
            return
        self._unwatch(wp)
        if seat.state is SeatState.STARTING:
            self._drain_ready(seat, wp)  # the sentinel may win the race with the load error
        wp.proc.join(timeout=1)
        wp.close()
        seat.process = None
        was_ready = seat.state is SeatState.READY
        lived_ns = time_ns() - seat.started_ns
        code = wp.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        reason = seat.kill_reason or seat.last_error or how
        seat.state = SeatState.BACKOFF
        if not self._stopping:
            log.warning("worker %d (pid %s) lost: %s", seat.index, wp.pid, _summary(reason))
        self._events.on_lost(seat, reason)
        seat.ring.reset()
        if self._stopping:
            seat.state = SeatState.STOPPED
            return
        if self._start_waiter is not None and not was_ready:
            # Initial start fails fast: a runner that cannot load will not load on retry.
            seat.state = SeatState.STOPPED
            if not self._start_waiter.done():
                self._start_waiter.set_exception(
                    WorkerStartError(
                        f"worker {seat.index} failed to start ({how}) building "
                        f"{self._spec.factory}: {reason}"
                    )
                )
            return
        if was_ready:
            seat.failed_starts = 0
            if lived_ns > self._policy.stable_after_s * 1e9:
                seat.failures = 0
        else:
            seat.failed_starts += 1
        self._failed(seat, reason)

    def _failed(self, seat: Seat, reason: str) -> None:
        assert self._loop is not None
        seat.failures += 1
        seat.last_error = reason
        if self._policy.gives_up(seat.failed_starts):
            seat.state = SeatState.GAVE_UP
            log.error(
                "worker %d gave up: failed to start %d times in a row: %s",
                seat.index,
                seat.failed_starts,
                _summary(reason),
            )
            if all(s.state is SeatState.GAVE_UP for s in self.seats):
                self._events.on_broken(
                    f"all {len(self.seats)} workers failed to start {seat.failed_starts} "
                    f"times in a row; last error: {reason}"
                )
            return
        delay = self._policy.delay_s(seat.failures)
        seat.state = SeatState.BACKOFF
        seat.restart_timer = self._loop.call_later(delay, self._restart, seat)

    def _restart(self, seat: Seat) -> None:
        if self._stopping:
            return
        self.restarts += 1
        log.warning(
            "restarting worker %d (restart #%d, consecutive failures %d)",
            seat.index,
            self.restarts,
            seat.failures,
        )
        self._spawn(seat)

    def note_progress(self, seat: Seat) -> None:
        """A batch completed on the seat: its worker works, so its failure streak ends."""
        seat.failures = 0

    async def _watch(self) -> None:
        tick = min(0.5, max(0.01, self._heartbeat_timeout_ns / 4e9))
        while True:
            await asyncio.sleep(tick)
            self.check_hangs(time_ns())

    def check_hangs(self, now_ns: int) -> None:
        """Kill workers that are busy without progress, or not ready in time."""
        for seat in self.seats:
            wp = seat.process
            if wp is None or seat.kill_reason:
                continue
            if seat.state is SeatState.READY:
                since = self._events.busy_since_ns(seat)
                if is_hung(now_ns, seat.ring.heartbeat_ns, since, self._heartbeat_timeout_ns):
                    seat.kill_reason = (
                        f"hung: no progress for {self._heartbeat_timeout_ns / 1e9:.1f}s "
                        "with a batch assigned (killed)"
                    )
            elif (
                seat.state is SeatState.STARTING
                and now_ns - seat.started_ns > self._start_timeout_ns
            ):
                seat.kill_reason = f"not ready within {self._start_timeout_ns / 1e9:.1f}s (killed)"
            if seat.kill_reason:
                log.warning("worker %d (pid %s) %s", seat.index, wp.pid, seat.kill_reason)
                wp.signal(signal.SIGKILL)
