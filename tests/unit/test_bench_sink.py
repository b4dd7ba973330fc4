"""Latency bookkeeping of the sink: percentiles, duplicates, missing and stale results."""

from __future__ import annotations

import math

import orjson
import pytest

from streamer.bench.sink import LatencyRecorder, latency_us, source_ts_from_value


def test_latency_is_measured_from_the_schedule() -> None:
    assert latency_us(1_000, 1_012.5) == (12_500, False)
    assert latency_us(1_000, 999.0) == (1, True)  # clock went backwards: counted, not negative


def test_percentiles_of_a_known_distribution() -> None:
    sched = {f"e{i}": 0 for i in range(1000)}
    rec = LatencyRecorder(sched)
    for i in range(1000):  # latencies 1..1000 ms observed, broker 1 ms earlier
        rec.observe(f"e{i}", observed_ms=i + 1, broker_ts_ms=i)
    r = rec.report()
    assert r.unique == r.expected == 1000 and r.missing == 0 and r.duplicates == 0
    assert r.observed.p50_ms == pytest.approx(500, rel=0.002)
    assert r.observed.p99_ms == pytest.approx(990, rel=0.002)
    assert r.observed.p999_ms == pytest.approx(999, rel=0.002)
    assert r.observed.max_ms == pytest.approx(1000, rel=0.002)
    assert r.broker.p99_ms == pytest.approx(989, rel=0.002)
    assert r.broker.count == 1000  # latency 0 at e0 is stored as 1 us, still counted
    assert r.clock_skewed == 0 and r.create_time_stamped == 0


def test_results_stamped_with_create_time_are_counted() -> None:
    rec = LatencyRecorder({"a": 0, "b": 0})
    rec.observe("a", 5, 4, log_append_time=False)
    rec.observe("b", 5, 4)
    assert rec.report().create_time_stamped == 1


def test_duplicates_count_once_for_latency() -> None:
    rec = LatencyRecorder({"a": 0, "b": 0})
    rec.observe("a", 5, 4)
    rec.observe("a", 500, 499)  # the at-least-once redelivery
    r = rec.report()
    assert (r.received, r.unique, r.duplicates, r.missing) == (2, 1, 1, 1)
    assert r.observed.max_ms == pytest.approx(5, rel=0.01)
    assert rec.missing_ids() == ["b"]
    assert not rec.complete


def test_results_of_other_windows_are_unknown_not_counted() -> None:
    rec = LatencyRecorder({"a": 0})
    rec.observe("stale", 5, 5)
    rec.observe("a", 5, 5)
    r = rec.report()
    assert r.unknown == 1 and r.unique == 1 and rec.complete


def test_open_mode_uses_the_source_timestamp() -> None:
    rec = LatencyRecorder()
    rec.observe("x", 120, None, source_ts_ms=100)
    rec.observe("y", 120, None)  # no timestamp at all: cannot be measured
    r = rec.report()
    assert r.unique == 1 and r.unknown == 1
    assert r.observed.p50_ms == pytest.approx(20, rel=0.01)
    assert r.broker.count == 0 and math.isnan(r.broker.p99_ms)


def test_throughput_spans_first_to_last_result() -> None:
    rec = LatencyRecorder({str(i): 0 for i in range(101)})
    for i in range(101):
        rec.observe(str(i), 1_000 + i * 10, None)
    assert rec.report().throughput == pytest.approx(101 / 1.0)


def test_source_timestamp_from_a_result_record() -> None:
    assert source_ts_from_value(orjson.dumps({"source_ts_ms": 42, "x": 1})) == 42
    assert source_ts_from_value(orjson.dumps({"source_ts_ms": None})) is None
    assert source_ts_from_value(b"not json") is None
    assert source_ts_from_value(b"[1]") is None
    assert source_ts_from_value(None) is None


def test_recorder_shares_the_generators_map_even_while_it_is_empty() -> None:
    scheduled: dict[str, int] = {}
    rec = LatencyRecorder(scheduled)
    scheduled["late-registered"] = 0  # the generator fills the map as it sends
    rec.observe("late-registered", 3, 2)
    assert rec.report().unique == 1 and rec.complete


def test_a_whole_millisecond_p99_reads_exactly_and_meets_its_target() -> None:
    """Broker latencies are whole ms: a P99 of exactly 10 ms must read 10.0, not 10.007."""
    sched = {f"e{i}": 0 for i in range(100)}
    r = LatencyRecorder(sched)
    for i in range(100):
        r.observe(f"e{i}", 10.0 if i >= 98 else 5.0, 10 if i >= 98 else 5)
    stats = r.report().broker
    assert stats.p99_ms == 10.0 and stats.max_ms == 10.0 and stats.p50_ms == 5.0
