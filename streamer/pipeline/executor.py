"""Executors: run (B, L) token batches through the model and return (B, K) float32 scores.

Two implementations of one interface (vLLM's UniProcExecutor beside MultiprocExecutor):

- `InProcessExecutor`: the runner lives in this process, on one worker thread so the
  event loop never blocks. For tests, debugging and single-core hosts.
- `MultiprocExecutor`: one worker process per device core, batches over shared memory
  (`shm_ring`), processes kept alive by the `supervisor`. A batch whose worker dies or
  hangs is re-dispatched to a live worker; its `submit` resolves exactly once.

Errors are typed (`executor_errors`): `RunnerError` / `WorkerCrashedError` concern one
batch (split it and retry); `ExecutorBrokenError` / `ExecutorClosedError` concern the
executor (retrying smaller batches cannot help).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import itertools
import logging
import os
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamer.model.tasks import Task
from streamer.pipeline.executor_errors import (
    ExecutorBrokenError,
    ExecutorClosedError,
    ExecutorError,
    RunnerError,
    WorkerCrashedError,
    WorkerStartError,
)
from streamer.pipeline.shm_ring import RingGeometry, SlotState, time_ns
from streamer.pipeline.supervisor import RestartPolicy, Seat, SeatState, Supervisor
from streamer.pipeline.worker import RunnerSpec, build_runner, runner_identity

__all__ = [
    "Executor",
    "ExecutorBrokenError",
    "ExecutorClosedError",
    "ExecutorError",
    "InProcessExecutor",
    "MultiprocExecutor",
    "RestartPolicy",
    "RunnerError",
    "RunnerSpec",
    "WorkerCrashedError",
    "WorkerStartError",
]

log = logging.getLogger(__name__)


class RunTimes(Protocol):
    """Where an executor stamps when a batch's model run started and ended (time.monotonic()
    seconds; a worker's CLOCK_MONOTONIC is the same clock), for the tail attribution."""

    run_start: float | None
    run_end: float | None


class Executor(Protocol):
    """What the service needs from an executor; it never knows which one it has."""

    @property
    def restarts(self) -> int:
        """Worker restarts so far."""
        ...

    async def start(self) -> None:
        """Build the runner(s); raise WorkerStartError with the cause if one cannot load."""

    async def submit(
        self,
        task: Task,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        times: RunTimes | None = None,
    ) -> np.ndarray:
        """Run one int32 (B, L) batch; return float32 (B, K) scores. `times`, if given, gets
        the run's start and end stamps (left None where the run did not happen)."""
        ...

    async def close(self) -> None:
        """Stop workers and release shared memory; pending submits fail."""

    @property
    def capacity(self) -> int:
        """Batches that can be in flight at once."""
        ...

    @property
    def parallelism(self) -> int:
        """Batches that actually run at the same time (one per worker); the rest queue."""
        ...

    @property
    def runner_info(self) -> dict[str, Any]:
        """What the runners serve (model, version, target, variant, why), once started."""
        ...

    def live_workers(self) -> int:
        """Workers ready to take batches now (the service's readiness probe)."""
        ...


def thread_env(threads: int) -> dict[str, str]:
    """The thread-pool variables a worker's libraries read at import (the one place they are set)."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def check_batch(
    input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
) -> tuple[int, int]:
    """Validate a batch's three arrays (same 2-D integer shape, B >= 1); return (B, L)."""
    for name, arr in (
        ("input_ids", input_ids),
        ("attention_mask", attention_mask),
        ("token_type_ids", token_type_ids),
    ):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D numpy array (B, L)")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers, got {arr.dtype}")
    shape = input_ids.shape
    if attention_mask.shape != shape or token_type_ids.shape != shape:
        raise ValueError(
            f"shape mismatch: input_ids {shape}, attention_mask {attention_mask.shape}, "
            f"token_type_ids {token_type_ids.shape}"
        )
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"empty batch {shape}")
    return int(shape[0]), int(shape[1])


def _as_scores(scores: Any, rows: int) -> np.ndarray:
    out = np.asarray(scores)
    if out.ndim != 2 or out.shape[0] != rows:
        raise ValueError(f"runner returned shape {out.shape}, expected ({rows}, K)")
    return np.ascontiguousarray(out, dtype=np.float32)


class InProcessExecutor:
    """Same interface as MultiprocExecutor, no processes: the runner runs on one thread."""

    def __init__(self, spec: RunnerSpec) -> None:
        self.spec = spec
        self.restarts = 0
        self._pool: ThreadPoolExecutor | None = None
        self._runner: Any = None
        self._closed = False

    @property
    def capacity(self) -> int:
        """One batch at a time (one runner thread)."""
        return 1

    @property
    def parallelism(self) -> int:
        """One runner thread."""
        return 1

    @property
    def runner_info(self) -> dict[str, Any]:
        """What the runner says it serves."""
        return runner_identity(self._runner) if self._runner is not None else {}

    def live_workers(self) -> int:
        """1 once the runner is loaded and until close."""
        return int(self._runner is not None and not self._closed)

    async def start(self) -> None:
        """Build the runner on the runner thread (loading can take seconds)."""
        loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamer-runner")
        try:
            self._runner = await loop.run_in_executor(self._pool, build_runner, self.spec)
        except Exception as exc:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise WorkerStartError(
                f"in-process runner {self.spec.factory} failed to load: "
                + "".join(traceback.format_exception(exc)).strip()
            ) from exc

    async def submit(
        self,
        task: Task,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        times: RunTimes | None = None,
    ) -> np.ndarray:
        """Run one batch on the runner thread."""
        if self._closed:
            raise ExecutorClosedError("executor is closed")
        if self._pool is None:
            raise ExecutorError("executor not started")
        check_batch(input_ids, attention_mask, token_type_ids)
        # The same int32 copies the shared-memory path hands its runner, so both
        # executors feed the runner identical arrays.
        ids, mask, types = (
            np.ascontiguousarray(a, dtype=np.int32)
            for a in (input_ids, attention_mask, token_type_ids)
        )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pool, self._run, Task(task), ids, mask, types, times
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and (current is None or not current.cancelling()):
                # close() cancelled the queued call, not our caller.
                raise ExecutorClosedError("executor closed") from None
            raise

    def _run(
        self,
        task: Task,
        input_ids: np.ndarray,
        mask: np.ndarray,
        types: np.ndarray,
        times: RunTimes | None,
    ) -> np.ndarray:
        start = time.monotonic()
        try:
            scores = self._runner.run(task, input_ids, mask, types)
        except Exception as exc:
            raise RunnerError(f"in-process runner: {type(exc).__name__}: {exc}") from exc
        if times is not None:
            times.run_start, times.run_end = start, time.monotonic()
        return _as_scores(scores, len(input_ids))

    async def close(self) -> None:
        """Release the runner thread (a batch still running finishes in the background)."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._runner = None


@dataclass(eq=False)
class _Batch:
    id: int
    task: Task
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray]
    future: asyncio.Future[np.ndarray]
    times: RunTimes | None = None  # the caller's stamps of the run (tail attribution)
    crashes: int = 0  # workers that died while RUNNING this batch
    last_reason: str = ""


class _TaskQueue:
    """Batches waiting for a worker slot: intent batches first, then pairs, each in order.

    A pair batch runs 100+ ms on a CPU (a few ms on a device) and the intent route's budget is
    10 ms end to end: in one process serving both routes, FIFO put intent batches behind pair
    batches. Priority here, and a slot per worker kept free of pairs (`reserve_intent_slot`),
    bound an intent batch's wait to the rest of the batch already running.
    """

    ORDER = (Task.INTENT, Task.DUPLICATE)

    def __init__(self) -> None:
        self._queues: dict[Task, collections.deque[_Batch]] = {
            t: collections.deque() for t in self.ORDER
        }

    def append(self, batch: _Batch) -> None:
        self._queues[batch.task].append(batch)

    def appendleft(self, batch: _Batch) -> None:
        self._queues[batch.task].appendleft(batch)

    def heads(self) -> list[_Batch]:
        """The next batch of each task, highest priority first."""
        return [q[0] for q in self._queues.values() if q]

    def remove_head(self, batch: _Batch) -> None:
        popped = self._queues[batch.task].popleft()
        assert popped is batch

    def clear(self) -> None:
        for q in self._queues.values():
            q.clear()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __iter__(self) -> Iterator[_Batch]:
        for q in self._queues.values():
            yield from q


@dataclass(eq=False)
class _SeatLoad:
    slots: list[_Batch | None]
    dispatched_ns: list[int] = field(default_factory=list)

    @property
    def busy(self) -> int:
        return sum(b is not None for b in self.slots)


# Executors not closed yet; the atexit hook SIGKILLs their workers and unlinks their
# segments if the process exits without `close()` (a crash, a forgotten close).
_LIVE: weakref.WeakSet[MultiprocExecutor] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for executor in list(_LIVE):
        executor.close_now()


class MultiprocExecutor:
    """One worker process per device core, batches over shared memory, supervised.

    - `workers`, `threads_per_worker`: processes and their intra-op threads
      (OMP/MKL/OpenBLAS variables are set before the worker interpreter starts);
      `env_per_worker(i)` adds e.g. NEURON_RT_VISIBLE_CORES / CUDA_VISIBLE_DEVICES.
    - `slots_per_worker`: batches queued inside one worker (2 = the next batch is
      already in shared memory while the current one runs).
    - `max_batch`, `max_seq_len`, `max_outputs`: slot sizes; larger batches are refused.
    - `heartbeat_timeout_s`: a worker holding work that shows no progress this long is
      killed and its batches re-dispatched, so it must exceed the slowest legitimate
      batch. `start_timeout_s` bounds loading a runner.
    - `max_batch_crashes`: workers a batch may take down before it fails alone with
      `WorkerCrashedError` (a poison batch must not kill every worker in turn).
    - `restart_policy`: backoff between restarts and when a worker gives up.
    - `reserve_intent_slot`: pair batches never take a worker's last free slot (set when one
      process serves both routes), so an intent batch waits at most for the running one.
      Queued intent batches always go before queued pair batches.
    """

    def __init__(
        self,
        spec: RunnerSpec,
        *,
        workers: int,
        threads_per_worker: int,
        slots_per_worker: int = 2,
        max_batch: int,
        max_seq_len: int,
        max_outputs: int,
        heartbeat_timeout_s: float = 10.0,
        env_per_worker: Callable[[int], dict[str, str]] | None = None,
        start_timeout_s: float = 300.0,
        max_batch_crashes: int = 3,
        restart_policy: RestartPolicy | None = None,
        reserve_intent_slot: bool = False,
    ) -> None:
        if workers < 1 or threads_per_worker < 1:
            raise ValueError("workers and threads_per_worker must be >= 1")
        if heartbeat_timeout_s <= 0 or start_timeout_s <= 0 or max_batch_crashes < 1:
            raise ValueError("timeouts must be > 0 and max_batch_crashes >= 1")
        self.spec = spec
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.geometry = RingGeometry(slots_per_worker, max_batch, max_seq_len, max_outputs)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.start_timeout_s = start_timeout_s
        self.max_batch_crashes = max_batch_crashes
        self.reserve_intent_slot = reserve_intent_slot and slots_per_worker > 1
        self.restart_policy = restart_policy or RestartPolicy()
        self._env_per_worker = env_per_worker
        self._sup: Supervisor | None = None
        self._loads: dict[int, _SeatLoad] = {}
        self._queue = _TaskQueue()
        self._ids = itertools.count(1)
        self._rotor = 0
        self._closed = False
        self._broken: str | None = None
        self._restarts_at_close = 0

    # -- interface ------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Batches in flight at once: workers x slots per worker."""
        return self.workers * self.geometry.n_slots

    @property
    def parallelism(self) -> int:
        """One running batch per worker; the other slots are its queue."""
        return self.workers

    @property
    def restarts(self) -> int:
        """Worker restarts so far (exported as a metric)."""
        return self._sup.restarts if self._sup is not None else self._restarts_at_close

    @property
    def runner_info(self) -> dict[str, Any]:
        """What the ready workers' runners serve (all load the same spec on one machine)."""
        if self._sup is None:
            return {}
        return next((dict(s.runner_info) for s in self._sup.seats if s.runner_info), {})

    def worker_pids(self) -> list[int | None]:
        """Current pid per worker index (None while restarting); for operators and tests."""
        if self._sup is None:
            return []
        return [s.process.pid if s.process is not None else None for s in self._sup.seats]

    def live_workers(self) -> int:
        """Workers ready to take batches now (the service's readiness probe)."""
        if self._sup is None:
            return 0
        return sum(s.state is SeatState.READY for s in self._sup.seats)

    def _env_for(self, index: int) -> dict[str, str]:
        env = thread_env(self.threads_per_worker) | {"STREAMER_WORKER_INDEX": str(index)}
        if self._env_per_worker is not None:
            env.update(self._env_per_worker(index))
        return env

    async def start(self) -> None:
        """Spawn the workers and wait until each has built its runner."""
        if self._sup is not None or self._closed:
            raise ExecutorError("executor already started (or closed)")
        self.bind(
            Supervisor(
                self.spec,
                self.geometry,
                workers=self.workers,
                env_for=self._env_for,
                events=self,
                heartbeat_timeout_s=self.heartbeat_timeout_s,
                start_timeout_s=self.start_timeout_s,
                policy=self.restart_policy,
            )
        )
        assert self._sup is not None
        _LIVE.add(self)
        try:
            await self._sup.start()
        except BaseException:
            self._closed = True
            self._sup = None  # it already stopped its workers and unlinked its segments
            _LIVE.discard(self)
            raise
        log.info(
            "executor started: %d workers x %d slots, %d threads each",
            self.workers,
            self.geometry.n_slots,
            self.threads_per_worker,
        )

    def bind(self, supervisor: Any) -> None:
        """Attach the supervisor whose seats this executor dispatches to.

        `start()` binds a real `Supervisor`; unit tests bind a stand-in with in-process
        seats to drive dispatch and re-dispatch without processes.
        """
        self._sup = supervisor
        self._loads = {
            i: _SeatLoad([None] * self.geometry.n_slots, [0] * self.geometry.n_slots)
            for i in range(self.workers)
        }

    async def submit(
        self,
        task: Task,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        times: RunTimes | None = None,
    ) -> np.ndarray:
        """Queue one batch for the least-loaded live worker and await its scores."""
        if self._closed:
            raise ExecutorClosedError("executor is closed")
        if self._broken is not None:
            raise ExecutorBrokenError(self._broken)
        if self._sup is None:
            raise ExecutorError("executor not started")
        b, length = check_batch(input_ids, attention_mask, token_type_ids)
        g = self.geometry
        if b > g.max_batch or length > g.max_seq_len:
            raise ValueError(f"batch {b}x{length} exceeds max {g.max_batch}x{g.max_seq_len}")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        batch = _Batch(
            next(self._ids), Task(task), (input_ids, attention_mask, token_type_ids), future, times
        )
        self._queue.append(batch)
        self._dispatch()
        # A cancelled caller cancels `future`; dispatch and harvest skip done futures, so
        # the result of a batch already in a worker is simply dropped.
        return await future

    async def close(self) -> None:
        """Fail pending batches, SIGTERM then SIGKILL workers, unlink segments."""
        if self._closed and self._sup is None:
            return
        self._closed = True
        self._fail_all(ExecutorClosedError("executor closed"))
        sup, self._sup = self._sup, None
        if sup is not None:
            self._restarts_at_close = sup.restarts
            await sup.stop()
        _LIVE.discard(self)

    def close_now(self) -> None:
        """Synchronous close for atexit and signal paths without a running loop."""
        self._closed = True
        sup, self._sup = self._sup, None
        if sup is not None:
            self._restarts_at_close = sup.restarts
            sup.stop_now()
        _LIVE.discard(self)

    # -- dispatch ---------------------------------------------------------------------------

    def _pick(self, task: Task) -> tuple[Seat, int] | None:
        assert self._sup is not None
        best: tuple[int, Seat] | None = None
        seats = self._sup.seats
        n = len(seats)
        # Pairs may not take a worker's last free slot when intents are served beside them.
        pair_cap = self.geometry.n_slots - (1 if self.reserve_intent_slot else 0)
        # Start the scan at a rotating seat so equally loaded workers share the work.
        for k in range(n):
            seat = seats[(self._rotor + k) % n]
            if seat.state is not SeatState.READY:
                continue
            load = self._loads[seat.index]
            busy = load.busy
            if task == Task.DUPLICATE and pair_cap >= 1:
                pairs = sum(b is not None and b.task == Task.DUPLICATE for b in load.slots)
                if pairs >= pair_cap:
                    continue
            if busy < self.geometry.n_slots and (best is None or busy < best[0]):
                best = (busy, seat)
        if best is None:
            return None
        seat = best[1]
        self._rotor = (seat.index + 1) % n
        free = self._loads[seat.index].slots.index(None)
        return seat, free

    def _dispatch(self) -> None:
        while self._queue and self._sup is not None:
            placed = False
            for batch in self._queue.heads():  # intents first
                if batch.future.done():
                    self._queue.remove_head(batch)
                    placed = True  # look again: the next one may be placeable
                    break
                target = self._pick(batch.task)
                if target is None:
                    continue
                self._queue.remove_head(batch)
                self._place(batch, *target)
                placed = True
                break
            if not placed:
                return

    def _place(self, batch: _Batch, seat: Seat, index: int) -> None:
        load = self._loads[seat.index]
        seat.ring.slots[index].write_request(batch.id, int(batch.task), *batch.arrays)
        load.slots[index] = batch
        load.dispatched_ns[index] = time_ns()
        assert seat.process is not None
        # A failed wake-up means the worker just died; its sentinel fires next and
        # on_lost re-dispatches this batch with the rest.
        seat.process.wake(index)

    def _harvest(self, seat: Seat, index: int) -> bool:
        load = self._loads[seat.index]
        batch = load.slots[index]
        if batch is None:
            return False
        slot = seat.ring.slots[index]
        state = slot.state
        if state not in (SlotState.DONE, SlotState.FAILED) or slot.batch_id != batch.id:
            return False
        outcome: np.ndarray | BaseException
        if state is SlotState.DONE:
            outcome = slot.read_result()
            if batch.times is not None:
                batch.times.run_start, batch.times.run_end = slot.run_times()
        else:
            outcome = RunnerError(f"worker {seat.index}: {slot.read_error()}")
        load.slots[index] = None
        slot.set_state(SlotState.FREE)
        if not batch.future.done():
            if isinstance(outcome, BaseException):
                batch.future.set_exception(outcome)
            else:
                batch.future.set_result(outcome)
        return True

    def _fail_all(self, exc: ExecutorError) -> None:
        batches = list(self._queue)
        self._queue.clear()
        for load in self._loads.values():
            batches.extend(b for b in load.slots if b is not None)
            load.slots = [None] * len(load.slots)
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(exc)

    # -- supervisor events --------------------------------------------------------------------

    def on_ready(self, seat: Seat) -> None:
        """A worker (new or restarted) can take batches: feed it."""
        self._dispatch()

    def on_done(self, seat: Seat) -> None:
        """Completion bytes arrived: resolve those slots, then refill them."""
        assert seat.process is not None and self._sup is not None
        try:
            data = os.read(seat.process.done_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self._sup.stop_reading_done(seat)
            return
        progressed = False
        for index in data:
            progressed |= self._harvest(seat, index)
        if progressed:
            self._sup.note_progress(seat)
        self._dispatch()

    def on_lost(self, seat: Seat, reason: str) -> None:
        """A worker died: keep what it finished, re-dispatch what it did not."""
        load = self._loads[seat.index]
        retry: list[_Batch] = []
        for index, batch in enumerate(load.slots):
            if batch is None or self._harvest(seat, index):
                continue
            load.slots[index] = None
            if batch.future.done():
                continue
            if seat.ring.slots[index].state is SlotState.RUNNING:
                batch.crashes += 1
                batch.last_reason = reason
            if batch.crashes >= self.max_batch_crashes:
                batch.future.set_exception(
                    WorkerCrashedError(
                        f"{batch.crashes} workers died running this batch; last: {reason}"
                    )
                )
            else:
                retry.append(batch)
        if retry:
            log.warning(
                "re-dispatching %d batch(es) from worker %d: %s",
                len(retry),
                seat.index,
                reason.strip().splitlines()[-1] if reason.strip() else reason,
            )
        # Oldest first, ahead of newer work: they have waited longest.
        for batch in sorted(retry, key=lambda b: b.id, reverse=True):
            self._queue.appendleft(batch)
        self._dispatch()

    def on_broken(self, reason: str) -> None:
        """No worker will come back: fail everything queued, refuse new batches."""
        self._broken = reason
        self._fail_all(ExecutorBrokenError(reason))

    def busy_since_ns(self, seat: Seat) -> int | None:
        """Dispatch time of the oldest batch the worker still owes (None when idle)."""
        load = self._loads[seat.index]
        slots = seat.ring.slots
        # A finished slot whose completion byte is not read yet (a busy loop) is not the
        # worker's fault: only SUBMITTED/RUNNING slots count toward a hang.
        times = [
            t
            for i, (b, t) in enumerate(zip(load.slots, load.dispatched_ns, strict=True))
            if b is not None and slots[i].state in (SlotState.SUBMITTED, SlotState.RUNNING)
        ]
        return min(times) if times else None
