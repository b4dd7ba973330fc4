"""Executors without processes: InProcessExecutor, and MultiprocExecutor's dispatch and
re-dispatch logic driven through in-process seats (the worker loop is called directly)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from streamer.model.tasks import Task
from streamer.pipeline.executor import (
    ExecutorBrokenError,
    ExecutorClosedError,
    InProcessExecutor,
    MultiprocExecutor,
    RunnerError,
    RunnerSpec,
    WorkerCrashedError,
    WorkerStartError,
    check_batch,
)
from streamer.pipeline.shm_ring import SlotState, WorkerRing
from streamer.pipeline.supervisor import Seat, SeatState
from streamer.pipeline.worker import run_slot
from tests.fakes import FakeRunner, expected_scores, make_fake_runner, random_batch

K = 3


def spec(**kwargs: Any) -> RunnerSpec:
    return RunnerSpec("tests.fakes:make_fake_runner", {"n_outputs": K, **kwargs})


# -- InProcessExecutor ----------------------------------------------------------------------


async def test_inprocess_scores_every_row() -> None:
    ex = InProcessExecutor(spec())
    await ex.start()
    rng = np.random.default_rng(3)
    try:
        for task in Task:
            batch = random_batch(rng, 7, 9)
            scores = await ex.submit(task, *batch)
            assert scores.dtype == np.float32
            np.testing.assert_array_equal(scores, expected_scores(task, *batch, K))
        assert ex.capacity == 1 and ex.restarts == 0
    finally:
        await ex.close()


async def test_inprocess_casts_inputs_like_shared_memory() -> None:
    ex = InProcessExecutor(spec())
    await ex.start()
    ids, mask, types = random_batch(np.random.default_rng(4), 3, 5)
    try:
        wide = await ex.submit(Task.INTENT, ids.astype(np.int64), mask, types)
        narrow = await ex.submit(Task.INTENT, ids, mask, types)
    finally:
        await ex.close()
    np.testing.assert_array_equal(wide, narrow)


async def test_inprocess_runner_error_is_per_batch() -> None:
    ex = InProcessExecutor(spec(fail_marker=2))
    await ex.start()
    ids = np.full((2, 4), 2, np.int32)
    try:
        with pytest.raises(RunnerError, match="marked row 2"):
            await ex.submit(Task.INTENT, ids, ids, ids)
        ok = await ex.submit(Task.INTENT, ids + 1, ids, ids)
        assert ok.shape == (2, K)
    finally:
        await ex.close()


async def test_inprocess_load_failure_is_clear() -> None:
    ex = InProcessExecutor(spec(load_error="no manifest in /x"))
    with pytest.raises(WorkerStartError, match="no manifest in /x"):
        await ex.start()


async def test_inprocess_does_not_block_the_loop() -> None:
    ex = InProcessExecutor(spec(sleep_s=0.2))
    await ex.start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    ids = np.ones((1, 2), np.int32)
    try:
        await ex.submit(Task.INTENT, ids, ids, ids)
    finally:
        t.cancel()
        await ex.close()
    assert ticks > 1  # the loop kept running while the runner slept


async def test_inprocess_closed_refuses() -> None:
    ex = InProcessExecutor(spec())
    await ex.start()
    await ex.close()
    ids = np.ones((1, 2), np.int32)
    with pytest.raises(ExecutorClosedError):
        await ex.submit(Task.INTENT, ids, ids, ids)


async def test_inprocess_close_fails_queued_batches_as_closed() -> None:
    ex = InProcessExecutor(spec(sleep_s=0.1))
    await ex.start()
    ids = np.ones((1, 2), np.int32)
    running = asyncio.create_task(ex.submit(Task.INTENT, ids, ids, ids))
    queued = asyncio.create_task(ex.submit(Task.INTENT, ids, ids, ids))
    await asyncio.sleep(0.02)
    await ex.close()
    with pytest.raises(ExecutorClosedError):
        await queued
    assert (await running).shape == (1, K)  # already on the runner thread: it finishes


@pytest.mark.parametrize(
    ("shapes", "dtype", "message"),
    [
        (((2, 3), (2, 3), (2, 4)), np.int32, "shape mismatch"),
        (((3,), (3,), (3,)), np.int32, "2-D"),
        (((2, 3), (2, 3), (2, 3)), np.float32, "integers"),
        (((0, 3), (0, 3), (0, 3)), np.int32, "empty"),
    ],
)
def test_check_batch_rejects(shapes: tuple[tuple[int, ...], ...], dtype: Any, message: str) -> None:
    arrays = [np.zeros(s, dtype) for s in shapes]
    with pytest.raises(ValueError, match=message):
        check_batch(*arrays)


# -- MultiprocExecutor dispatch, without processes -----------------------------------------


class InlineProcess:
    """Stands in for a worker process: records wake-ups, owns a real completion pipe."""

    pid = 4242

    def __init__(self) -> None:
        self.done_fd, self.done_w = os.pipe()
        self.woken: list[int] = []

    def wake(self, slot: int) -> bool:
        self.woken.append(slot)
        return True

    def close(self) -> None:
        os.close(self.done_fd)
        os.close(self.done_w)


class InlineSupervisor:
    """Seats backed by real segments; the test plays the worker with `serve`."""

    restarts = 0

    def __init__(self, ex: MultiprocExecutor) -> None:
        self.ex = ex
        self.seats = [
            Seat(i, WorkerRing.create(ex.geometry, f"unit{i}"), SeatState.READY, InlineProcess())
            for i in range(ex.workers)
        ]
        self.worker_rings = [WorkerRing.attach(s.ring.handle) for s in self.seats]
        self.progress = 0

    def note_progress(self, seat: Seat) -> None:
        self.progress += 1

    def stop_reading_done(self, seat: Seat) -> None:
        raise AssertionError("completion pipe never reaches EOF here")

    async def stop(self) -> None:
        for seat, wring in zip(self.seats, self.worker_rings, strict=True):
            wring.close()
            assert isinstance(seat.process, InlineProcess)
            seat.process.close()
            seat.ring.unlink()
            seat.ring.close()

    def serve(self, index: int, runner: FakeRunner, *, notify: bool = True) -> None:
        """Run every batch woken on seat `index`, like the worker loop would."""
        seat = self.seats[index]
        proc = seat.process
        assert isinstance(proc, InlineProcess)
        woken, proc.woken = proc.woken, []
        for slot in woken:
            run_slot(self.worker_rings[index], runner, slot)
            os.write(proc.done_w, bytes((slot,)))
        if notify and woken:
            self.ex.on_done(seat)


@pytest.fixture
async def inline() -> AsyncIterator[tuple[MultiprocExecutor, InlineSupervisor]]:
    ex = MultiprocExecutor(
        spec(),
        workers=2,
        threads_per_worker=1,
        slots_per_worker=2,
        max_batch=8,
        max_seq_len=8,
        max_outputs=4,
        max_batch_crashes=2,
    )
    sup = InlineSupervisor(ex)
    ex.bind(sup)
    yield ex, sup
    await ex.close()  # idempotent; releases the segments even if the test failed


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def loads(ex: MultiprocExecutor) -> list[int]:
    return [ex._loads[i].busy for i in range(ex.workers)]


async def test_dispatch_spreads_then_queues_beyond_capacity(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, sup = inline
    rng = np.random.default_rng(5)
    work = [random_batch(rng, 4, 8) for _ in range(5)]
    tasks = [asyncio.create_task(ex.submit(Task.INTENT, *b)) for b in work]
    await settle()
    assert loads(ex) == [2, 2]  # least-loaded first, both workers used, capacity 4
    assert len(ex._queue) == 1
    assert ex.busy_since_ns(sup.seats[0]) is not None
    runner = make_fake_runner(n_outputs=K)
    sup.serve(1, runner)  # frees seat 1: the queued batch goes there
    assert loads(ex) == [2, 1] and len(ex._queue) == 0
    sup.serve(0, runner)
    sup.serve(1, runner)
    results = await asyncio.gather(*tasks)
    for b, scores in zip(work, results, strict=True):
        np.testing.assert_array_equal(scores, expected_scores(Task.INTENT, *b, K))
    assert loads(ex) == [0, 0] and ex.busy_since_ns(sup.seats[0]) is None
    assert sup.progress >= 3
    await ex.close()


async def test_lost_worker_keeps_finished_and_redispatches_the_rest_once(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, sup = inline
    rng = np.random.default_rng(6)
    runner = make_fake_runner(n_outputs=K)
    sup.seats[1].state = SeatState.STARTING  # only seat 0 takes work for now
    work = [random_batch(rng, 3, 6) for _ in range(2)]
    tasks = [asyncio.create_task(ex.submit(Task.DUPLICATE, *b)) for b in work]
    await settle()
    assert loads(ex) == [2, 0]
    # Worker 0 finishes slot 0 but dies before notifying, while running slot 1.
    woken = sup.seats[0].process.woken  # type: ignore[union-attr]
    run_slot(sup.worker_rings[0], runner, woken[0])
    sup.seats[0].ring.slots[woken[1]].set_state(SlotState.RUNNING)
    sup.seats[0].state = SeatState.BACKOFF
    sup.seats[1].state = SeatState.READY
    ex.on_lost(sup.seats[0], "killed by signal 9")
    await settle()
    assert tasks[0].done()  # harvested from the dead worker's segment
    assert loads(ex) == [0, 1]  # the running one moved to worker 1
    sup.serve(1, runner)
    results = await asyncio.gather(*tasks)
    for b, scores in zip(work, results, strict=True):
        np.testing.assert_array_equal(scores, expected_scores(Task.DUPLICATE, *b, K))
    # A late completion byte for the dead worker's slot changes nothing.
    os.write(sup.seats[0].process.done_w, bytes((woken[1],)))  # type: ignore[union-attr]
    ex.on_done(sup.seats[0])
    await ex.close()


async def test_poison_batch_fails_after_max_crashes_others_are_not_blamed(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, sup = inline
    rng = np.random.default_rng(7)
    sup.seats[1].state = SeatState.STARTING
    poison = asyncio.create_task(ex.submit(Task.INTENT, *random_batch(rng, 2, 4)))
    bystander = asyncio.create_task(ex.submit(Task.INTENT, *random_batch(rng, 2, 4)))
    for _ in range(2):  # max_batch_crashes=2
        await settle()
        seat = sup.seats[0]
        woken, seat.process.woken = seat.process.woken, []  # type: ignore[union-attr]
        # The poison batch is dispatched first (oldest first after a re-dispatch too).
        seat.ring.slots[woken[0]].set_state(SlotState.RUNNING)
        seat.state = SeatState.BACKOFF
        ex.on_lost(seat, "killed by signal 9")
        seat.state = SeatState.READY
        ex.on_ready(seat)
    await settle()
    with pytest.raises(WorkerCrashedError, match="2 workers died"):
        await poison
    assert not bystander.done()
    sup.serve(0, make_fake_runner(n_outputs=K))
    assert (await bystander).shape == (2, K)
    await ex.close()


async def test_cancelled_submit_frees_its_slot(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, sup = inline
    ids = np.ones((2, 2), np.int32)
    t = asyncio.create_task(ex.submit(Task.INTENT, ids, ids, ids))
    await settle()
    t.cancel()
    await settle()
    which = 0 if sup.seats[0].process.woken else 1  # type: ignore[union-attr]
    sup.serve(which, make_fake_runner(n_outputs=K))
    assert loads(ex) == [0, 0]
    assert t.cancelled()
    await ex.close()


async def test_broken_and_closed_fail_pending_and_refuse(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, sup = inline
    for seat in sup.seats:
        seat.state = SeatState.GAVE_UP
    ids = np.ones((1, 1), np.int32)
    queued = asyncio.create_task(ex.submit(Task.INTENT, ids, ids, ids))
    await settle()
    ex.on_broken("all 2 workers failed 5 times in a row; last error: boom")
    with pytest.raises(ExecutorBrokenError, match="boom"):
        await queued
    with pytest.raises(ExecutorBrokenError):
        await ex.submit(Task.INTENT, ids, ids, ids)
    await ex.close()
    with pytest.raises(ExecutorClosedError):
        await ex.submit(Task.INTENT, ids, ids, ids)


async def test_close_fails_in_flight(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, _ = inline
    ids = np.ones((1, 1), np.int32)
    t = asyncio.create_task(ex.submit(Task.INTENT, ids, ids, ids))
    await settle()
    await ex.close()
    with pytest.raises(ExecutorClosedError):
        await t


async def test_submit_rejects_batches_larger_than_the_slots(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, _ = inline
    big = np.ones((9, 2), np.int32)
    with pytest.raises(ValueError, match="exceeds max 8x8"):
        await ex.submit(Task.INTENT, big, big, big)
    await ex.close()


async def test_finished_but_unread_slots_do_not_count_as_hung(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, sup = inline
    ids = np.ones((2, 2), np.int32)
    t = asyncio.create_task(ex.submit(Task.INTENT, ids, ids, ids))
    await settle()
    seat = next(s for s in sup.seats if s.process.woken)  # type: ignore[union-attr]
    assert ex.busy_since_ns(seat) is not None
    sup.serve(seat.index, make_fake_runner(n_outputs=K), notify=False)
    assert ex.busy_since_ns(seat) is None  # DONE, completion byte not read yet
    ex.on_done(seat)
    assert (await t).shape == (2, K)


async def test_intent_batches_go_first_and_pairs_leave_a_slot_free() -> None:
    """A process serving both routes: queued intents jump the pair queue, and pairs never
    take a worker's last slot, so an intent waits at most for the batch already running."""
    ex = MultiprocExecutor(
        spec(), workers=1, threads_per_worker=1, slots_per_worker=2, max_batch=8,
        max_seq_len=8, max_outputs=4, reserve_intent_slot=True,
    )  # fmt: skip
    sup = InlineSupervisor(ex)
    ex.bind(sup)
    rng = np.random.default_rng(9)
    runner = make_fake_runner(n_outputs=K)
    pairs = [asyncio.create_task(ex.submit(Task.DUPLICATE, *random_batch(rng, 2, 4)))
             for _ in range(3)]  # fmt: skip
    await settle()
    slots = ex._loads[0].slots
    assert [b.task for b in slots if b is not None] == [Task.DUPLICATE]  # one slot kept free
    assert len(ex._queue) == 2
    intent = asyncio.create_task(ex.submit(Task.INTENT, *random_batch(rng, 2, 4)))
    await settle()
    assert sorted(int(b.task) for b in slots if b is not None) == [Task.INTENT, Task.DUPLICATE]
    assert len(ex._queue) == 2  # the intent took the free slot at once, pairs still wait
    for _ in range(4):
        sup.serve(0, runner)
        await settle()
    await asyncio.gather(intent, *pairs)
    await ex.close()


async def test_queued_intents_are_dispatched_before_queued_pairs(
    inline: tuple[MultiprocExecutor, InlineSupervisor],
) -> None:
    ex, sup = inline
    rng = np.random.default_rng(10)
    runner = make_fake_runner(n_outputs=K)
    order: list[Task] = []
    fill = [asyncio.create_task(ex.submit(Task.DUPLICATE, *random_batch(rng, 2, 4)))
            for _ in range(4)]  # fmt: skip
    await settle()
    assert len(ex._queue) == 0 and loads(ex) == [2, 2]
    late_pair = asyncio.create_task(ex.submit(Task.DUPLICATE, *random_batch(rng, 2, 4)))
    await settle()
    late_intent = asyncio.create_task(ex.submit(Task.INTENT, *random_batch(rng, 2, 4)))
    await settle()
    assert [b.task for b in ex._queue] == [Task.INTENT, Task.DUPLICATE]
    sup.serve(0, runner)  # frees two slots: the intent is placed before the older pair
    await settle()
    order = [b.task for b in ex._loads[0].slots if b is not None]
    assert Task.INTENT in order
    for i in (0, 1, 0, 1):
        sup.serve(i, runner)
        await settle()
    await asyncio.gather(late_intent, late_pair, *fill)
