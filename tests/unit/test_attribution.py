"""Tail attribution: segments sum to an event's time; the slow set shows where the slow ones went."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.pipeline.attribution import SEGMENTS, BatchClock, TailAttribution
from streamer.pipeline.metrics import Metrics
from streamer.pipeline.shm_ring import RingGeometry, WorkerRing


def _tail(metrics: Metrics, **kw: int) -> TailAttribution:
    return TailAttribution(
        metrics.tail_segment_seconds, metrics.tail_events, metrics.tail_threshold, "intent", **kw
    )


def _sums(metrics: Metrics, events: str) -> tuple[int, dict[str, float]]:
    """(events counted, seconds per segment) of one set, read from the exposition."""
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    count, sums = 0, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("events") != events:
                continue
            if s.name == "streamer_tail_events_total":
                count = int(s.value)
            elif s.name == "streamer_tail_segment_seconds_total":
                sums[s.labels["segment"]] = s.value
    return count, sums


def _row(
    fetch_s: float, decode_s: float, ready_at: float, broker_s: float = 0.0
) -> SimpleNamespace:
    return SimpleNamespace(broker_s=broker_s, fetch_s=fetch_s, decode_s=decode_s, ready_at=ready_at)


def _batch(
    tail: TailAttribution, rows: list[SimpleNamespace], run_s: float = 0.004, at: float = 10.0
) -> None:
    # closed 1 ms after the rows were ready; task 0.5 ms later; worker waits 0.2 ms; run; 0.3
    # ms back; produce 1 ms.
    closed = at
    clock = BatchClock(closed=closed, started=closed + 0.0005)
    clock.run_start = clock.started + 0.0002
    clock.run_end = clock.run_start + run_s
    clock.back = clock.run_end + 0.0003
    tail.batch_done(rows, clock, acked=clock.back + 0.001)


def test_the_segments_of_an_event_sum_to_its_end_to_end_time() -> None:
    metrics = Metrics()
    tail = _tail(metrics, sample_every=1)
    _batch(tail, [_row(0.002, 0.0007, 9.999, 0.001), _row(0.003, 0.0007, 9.9995)])
    count, sums = _sums(metrics, "sampled")
    assert count == 2
    assert set(sums) == set(SEGMENTS)
    assert sums["to_broker"] == pytest.approx(0.001)
    assert sums["fetch"] == pytest.approx(0.005)
    assert sums["decode"] == pytest.approx(0.0014)
    assert sums["linger"] == pytest.approx(0.001 + 0.0005)
    assert sums["queue"] == pytest.approx(0.001)
    assert sums["worker_wait"] == pytest.approx(0.0004)
    assert sums["run"] == pytest.approx(0.008)
    assert sums["return"] == pytest.approx(0.0006)
    assert sums["produce"] == pytest.approx(0.002)
    e2e = (0.001 + 0.002 + 0.0007 + 0.001 + 0.0005 + 0.0002 + 0.004 + 0.0003 + 0.001) + (
        0.003 + 0.0007 + 0.0005 + 0.0005 + 0.0002 + 0.004 + 0.0003 + 0.001
    )
    assert sum(sums.values()) == pytest.approx(e2e)


def test_the_slow_set_holds_the_events_above_the_running_p99_and_shows_their_segment() -> None:
    metrics = Metrics()
    tail = _tail(metrics, sample_every=10, refresh_every=100)
    for i in range(2000):
        slow = i % 100 == 99  # 1% of the batches run 40 ms instead of 4
        _batch(tail, [_row(0.002, 0.0005, 9.999)], run_s=0.040 if slow else 0.004)
    count, sums = _sums(metrics, "slow")
    assert 10 <= count <= 20, "the 1% of slow events, counted once the P99 was known"
    assert sums["run"] / count == pytest.approx(0.040)
    assert max(sums, key=lambda k: sums[k]) == "run"
    sampled, _ = _sums(metrics, "sampled")
    assert sampled == 200
    assert 0.004 < tail.threshold_s <= 0.050


def test_no_event_is_slow_before_the_running_p99_is_known() -> None:
    metrics = Metrics()
    tail = _tail(metrics, sample_every=1000)
    for _ in range(100):
        _batch(tail, [_row(0.002, 0.0005, 9.999)], run_s=1.0)
    assert _sums(metrics, "slow")[0] == 0


def test_an_executor_without_run_stamps_counts_the_whole_call_as_run() -> None:
    metrics = Metrics()
    tail = _tail(metrics, sample_every=1)
    clock = BatchClock(closed=10.0, started=10.001)
    clock.back = 10.006
    tail.batch_done([_row(0.0, 0.0, 10.0)], clock, acked=10.007)
    _, sums = _sums(metrics, "sampled")
    assert sums["run"] == pytest.approx(0.005)
    assert sums["worker_wait"] == 0 and sums["return"] == 0


def test_a_slot_carries_the_workers_run_stamps_and_a_new_request_clears_them() -> None:
    import numpy as np

    ring = WorkerRing.create(
        RingGeometry(n_slots=1, max_batch=2, max_seq_len=4, max_outputs=2), "test"
    )
    try:
        slot = ring.slots[0]
        ids = np.ones((1, 4), np.int32)
        slot.write_request(1, 0, ids, ids, ids)
        slot.stamp_run(5_000_000_000, 5_004_000_000)
        assert slot.run_times() == (5.0, 5.004)
        slot.write_request(2, 0, ids, ids, ids)
        assert slot.run_times() == (0.0, 0.0)
    finally:
        ring.close()
        ring.unlink()


def test_a_cold_start_ages_out_of_the_running_p99() -> None:
    """The threshold covers the last few seconds only: a slow start does not hide the tail of
    the steady state that follows it."""
    metrics = Metrics()
    tail = _tail(metrics, sample_every=1000, refresh_every=10)
    for i in range(200):  # a cold start: 200 ms each, during the first second
        _batch(tail, [_row(0.002, 0.0005, i / 200 - 0.001)], run_s=0.200, at=i / 200)
    assert tail.threshold_s > 0.150
    for i in range(1000):  # then 100/s for 10 s, 1% of them 30-40 ms
        at = 1.0 + i / 100
        run = 0.030 + i / 100_000 if i % 100 == 99 else 0.004
        _batch(tail, [_row(0.002, 0.0005, at - 0.001)], run_s=run, at=at)
    assert tail.threshold_s < 0.030
    assert _sums(metrics, "slow")[0] >= 4, "the steady state's slow 1%, once the start aged out"


def test_collector_passes_are_timed_by_generation_until_unwatched() -> None:
    import gc

    metrics = Metrics()
    unwatch = metrics.watch_gc()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        unwatch()
    gc.collect(2)  # after unwatch: not counted
    from prometheus_client import generate_latest

    counts = {
        s.labels["generation"]: s.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
        if s.name == "streamer_gc_pause_seconds_count"
    }
    assert counts["0"] >= 1 and counts["2"] == 1
