"""Slot layout and ownership protocol of shm_ring, driven in one process (no workers)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from multiprocessing import resource_tracker

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.model.tasks import Task
from streamer.pipeline.shm_ring import (
    ALIGN,
    HEADER_BYTES,
    NAME_PREFIX,
    RingGeometry,
    SlotState,
    WorkerRing,
)
from streamer.pipeline.worker import run_slot
from tests.fakes import expected_scores, make_fake_runner, random_batch

GEOMETRY = RingGeometry(n_slots=2, max_batch=8, max_seq_len=16, max_outputs=4)


@pytest.fixture
def ring() -> Iterator[WorkerRing]:
    r = WorkerRing.create(GEOMETRY, "unit")
    yield r
    r.unlink()
    r.close()


@pytest.fixture
def attached(ring: WorkerRing) -> Iterator[WorkerRing]:
    """The worker's view of the same segment (attach path, as in the child)."""
    w = WorkerRing.attach(ring.handle)
    yield w
    w.close()


def test_geometry_regions_are_aligned_and_sized() -> None:
    g = RingGeometry(n_slots=3, max_batch=5, max_seq_len=7, max_outputs=3)
    assert g.token_bytes % ALIGN == 0 and g.token_bytes >= 4 * 5 * 7
    assert g.score_bytes % ALIGN == 0 and g.score_bytes >= 4 * 5 * 3
    assert g.slot_bytes % ALIGN == 0
    assert g.total_bytes == HEADER_BYTES + 3 * g.slot_bytes


@pytest.mark.parametrize("bad", [{"n_slots": 0}, {"n_slots": 256}, {"max_batch": 0}])
def test_geometry_rejects_bad_sizes(bad: dict[str, int]) -> None:
    args = {"n_slots": 2, "max_batch": 4, "max_seq_len": 4, "max_outputs": 2, **bad}
    with pytest.raises(ValueError):
        RingGeometry(**args)


def test_name_and_handle(ring: WorkerRing) -> None:
    assert ring.name.startswith(NAME_PREFIX) and ring.name.endswith("-unit")
    handle = pickle.loads(pickle.dumps(ring.handle))
    assert handle == ring.handle


def test_fresh_ring_is_free_and_silent(ring: WorkerRing) -> None:
    assert [s.state for s in ring.slots] == [SlotState.FREE, SlotState.FREE]
    assert ring.heartbeat_ns == 0 and ring.worker_pid == 0


def test_request_result_round_trip_between_two_mappings(
    ring: WorkerRing, attached: WorkerRing
) -> None:
    rng = np.random.default_rng(0)
    ids, mask, types = random_batch(rng, 5, 11)
    ring.slots[1].write_request(42, int(Task.DUPLICATE), ids, mask, types)
    worker_slot = attached.slots[1]
    assert worker_slot.state is SlotState.SUBMITTED
    assert worker_slot.batch_id == 42 and worker_slot.task == Task.DUPLICATE
    assert worker_slot.shape == (5, 11)
    w_ids, w_mask, w_types = worker_slot.request_views()
    np.testing.assert_array_equal(w_ids, ids)
    np.testing.assert_array_equal(w_mask, mask)
    np.testing.assert_array_equal(w_types, types)
    assert np.shares_memory(w_ids, worker_slot.input_ids)  # zero-copy on the worker side
    scores = np.arange(15, dtype=np.float32).reshape(5, 3)
    worker_slot.write_result(scores)
    assert ring.slots[1].state is SlotState.DONE
    out = ring.slots[1].read_result()
    np.testing.assert_array_equal(out, scores)
    assert not np.shares_memory(out, ring.slots[1].scores)  # safe to reuse the slot
    assert ring.slots[0].state is SlotState.FREE  # neighbours untouched


def test_heartbeat_and_pid_cross_mappings(ring: WorkerRing, attached: WorkerRing) -> None:
    attached.set_worker_pid(1234)
    attached.beat()
    assert ring.worker_pid == 1234 and ring.heartbeat_ns > 0
    ring.reset()
    assert attached.heartbeat_ns == 0 and attached.worker_pid == 0


def test_error_text_is_carried_and_truncated(ring: WorkerRing) -> None:
    slot = ring.slots[0]
    slot.write_request(1, 0, *random_batch(np.random.default_rng(1), 2, 3))
    slot.write_error("ValueError: é" + "x" * 5000)
    assert slot.state is SlotState.FAILED
    text = slot.read_error()
    assert text.startswith("ValueError: é") and len(text.encode()) <= 1024


def test_oversized_batch_and_outputs_are_refused(ring: WorkerRing) -> None:
    slot = ring.slots[0]
    too_long = np.ones((2, 17), np.int32)
    with pytest.raises(ValueError, match="exceeds slot capacity"):
        slot.write_request(1, 0, too_long, too_long, too_long)
    assert slot.state is SlotState.FREE
    ok = np.ones((2, 4), np.int32)
    slot.write_request(2, 0, ok, ok, ok)
    with pytest.raises(ValueError, match="5 outputs"):
        slot.write_result(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="expected"):
        slot.write_result(np.zeros((3, 2), np.float32))


def test_attach_checks_the_header(ring: WorkerRing) -> None:
    wrong = RingGeometry(n_slots=2, max_batch=9, max_seq_len=16, max_outputs=4)
    with pytest.raises(ValueError, match="header"):
        WorkerRing.attach(type(ring.handle)(ring.name, wrong))


def test_attach_does_not_register_with_resource_tracker(
    ring: WorkerRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(resource_tracker, "register", lambda n, t: calls.append((n, t)))
    w = WorkerRing.attach(ring.handle)
    w.close()
    assert calls == []
    assert resource_tracker.register is not None  # restored to the patched function


def test_only_the_creator_unlinks(ring: WorkerRing, attached: WorkerRing) -> None:
    with pytest.raises(RuntimeError, match="creating process"):
        attached.unlink()


def test_close_tolerates_escaped_views() -> None:
    r = WorkerRing.create(GEOMETRY, "escape")
    kept = r.slots[0].input_ids  # e.g. a runner that keeps an input array
    r.unlink()
    r.close()  # must not raise BufferError
    assert kept.shape == (GEOMETRY.max_batch * GEOMETRY.max_seq_len,)


def test_run_slot_executes_the_protocol(ring: WorkerRing, attached: WorkerRing) -> None:
    runner = make_fake_runner(n_outputs=3)
    rng = np.random.default_rng(2)
    batch = random_batch(rng, 8, 16)
    ring.slots[0].write_request(7, int(Task.INTENT), *batch)
    run_slot(attached, runner, 0)
    assert ring.slots[0].state is SlotState.DONE
    assert ring.heartbeat_ns > 0
    np.testing.assert_array_equal(
        ring.slots[0].read_result(), expected_scores(Task.INTENT, *batch, 3)
    )


def test_run_slot_turns_runner_errors_into_failed(ring: WorkerRing, attached: WorkerRing) -> None:
    runner = make_fake_runner(fail_marker=9)
    ids = np.full((2, 3), 9, np.int32)
    ring.slots[1].write_request(1, 0, ids, ids, ids)
    run_slot(attached, runner, 1)
    assert ring.slots[1].state is SlotState.FAILED
    assert "ValueError: marked row 9" in ring.slots[1].read_error()
    # Too many outputs for the slot is a runner error too, not a worker crash.
    ring.slots[1].write_request(2, 0, ids + 1, ids, ids)
    run_slot(attached, make_fake_runner(n_outputs=5), 1)
    assert ring.slots[1].state is SlotState.FAILED
    assert "5 outputs" in ring.slots[1].read_error()


def test_run_slot_refuses_a_slot_it_does_not_own(ring: WorkerRing, attached: WorkerRing) -> None:
    run_slot(attached, make_fake_runner(), 0)  # woken for a FREE slot: protocol bug
    assert ring.slots[0].state is SlotState.FAILED
    assert "expected SUBMITTED" in ring.slots[0].read_error()


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 8),
    length=st.integers(1, 16),
    k=st.integers(1, 4),
    slot=st.integers(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_shape_round_trips(b: int, length: int, k: int, slot: int, seed: int) -> None:
    r = WorkerRing.create(GEOMETRY, "prop")
    w = WorkerRing.attach(r.handle)
    try:
        batch = random_batch(np.random.default_rng(seed), b, length)
        r.slots[slot].write_request(seed, 1, *batch)
        run_slot(w, make_fake_runner(n_outputs=k), slot)
        np.testing.assert_array_equal(r.slots[slot].read_result(), expected_scores(1, *batch, k))
    finally:
        w.close()
        r.unlink()
        r.close()
