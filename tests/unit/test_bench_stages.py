"""Stage breakdown from two Prometheus scrapes of the service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamer.bench.stages import (
    SEGMENTS,
    parse_stages,
    parse_tail,
    segment_order,
    stage_deltas,
    tail_deltas,
)


def test_deltas_between_two_scrapes() -> None:
    reg = CollectorRegistry()
    h = Histogram(
        "streamer_stage_seconds",
        "x",
        ["route", "stage"],
        buckets=(0.001, 0.005, 0.010, 0.050),
        registry=reg,
    )
    for _ in range(50):
        h.labels("intent", "model").observe(0.040)  # before the step: must not count
    before = parse_stages(generate_latest(reg).decode())
    for _ in range(99):
        h.labels("intent", "model").observe(0.003)
    h.labels("intent", "model").observe(0.008)
    h.labels("intent", "linger").observe(0.0005)
    after = parse_stages(generate_latest(reg).decode())
    stats = {s.stage: s for s in stage_deltas(before, after)}
    assert stats["model"].count == 100
    assert abs(stats["model"].mean_ms - (99 * 3 + 8) / 100) < 1e-6
    assert stats["model"].p99_le_ms == 5.0
    assert stats["linger"].count == 1 and stats["linger"].p99_le_ms == 1.0


def test_other_metrics_are_ignored() -> None:
    assert parse_stages("# TYPE other_total counter\nother_total 3\n") == {}


# --------------------------------------------------------------------------- tail attribution


def exposition(slow_n: float, sampled_n: float, threshold_s: float, scale: float) -> str:
    """The service's text exposition, by hand: counters with TYPE lines and `_created`
    samples, a gauge, and an unrelated metric; slow events spend `scale` x the sample's time."""
    per_event = {"to_broker": 0.0006, "fetch": 0.002, "decode": 0.0004, "linger": 0.001, "queue": 0.0005,
                 "worker_wait": 0.0003, "run": 0.003, "return": 0.0002, "produce": 0.002}  # fmt: skip
    lines = [
        "# HELP streamer_tail_segment_seconds_total Seconds events spent in each segment.",
        "# TYPE streamer_tail_segment_seconds_total counter",
    ]
    for kind, n, k in (("slow", slow_n, scale), ("sampled", sampled_n, 1.0)):
        for seg, s in per_event.items():
            extra = 0.010 if (kind == "slow" and seg == "queue") else 0.0
            lines.append(
                f'streamer_tail_segment_seconds_total{{route="intent",events="{kind}",'
                f'segment="{seg}"}} {n * (s * k + extra)!r}'
            )
            lines.append(
                f'streamer_tail_segment_seconds_created{{route="intent",events="{kind}",'
                f'segment="{seg}"}} 1.7e9'
            )
    lines += [
        "# HELP streamer_tail_events_total Events counted in each set.",
        "# TYPE streamer_tail_events_total counter",
        f'streamer_tail_events_total{{route="intent",events="slow"}} {slow_n!r}',
        f'streamer_tail_events_total{{route="intent",events="sampled"}} {sampled_n!r}',
        'streamer_tail_events_created{route="intent",events="slow"} 1.7e9',
        "# HELP streamer_tail_threshold_seconds The running P99.",
        "# TYPE streamer_tail_threshold_seconds gauge",
        f'streamer_tail_threshold_seconds{{route="intent"}} {threshold_s!r}',
        "# TYPE streamer_records_in_total counter",
        'streamer_records_in_total{route="intent"} 12345.0',
    ]
    return "\n".join(lines) + "\n"


def test_tail_metrics_are_parsed_from_the_exposition() -> None:
    snap = parse_tail(exposition(10, 40, 0.009, 1.0))
    assert snap.events == {("intent", "slow"): 10.0, ("intent", "sampled"): 40.0}
    assert snap.threshold_s == {"intent": 0.009}
    assert len(snap.seconds) == 2 * len(SEGMENTS)  # no `_created` sample counted as seconds
    assert abs(snap.seconds[("intent", "sampled", "run")] - 40 * 0.003) < 1e-12
    # Without TYPE lines the parser keeps `_total` in the family name: matched all the same.
    untyped = "\n".join(
        line for line in exposition(10, 40, 0.009, 1.0).splitlines() if not line.startswith("#")
    )
    assert parse_tail(untyped + "\n") == snap
    assert parse_tail("# TYPE other_total counter\nother_total 3\n").events == {}


def test_tail_deltas_are_the_steps_means_per_segment() -> None:
    before = parse_tail(exposition(10, 40, 0.008, 2.0))
    after = parse_tail(exposition(30, 140, 0.012, 2.0))
    stats = {t.events: t for t in tail_deltas(before, after)}
    slow, sampled = stats["slow"], stats["sampled"]
    assert (slow.count, sampled.count) == (20, 100)
    assert list(slow.mean_ms) == list(SEGMENTS)  # pipeline order
    assert abs(sampled.mean_ms["run"] - 3.0) < 1e-9
    assert abs(slow.mean_ms["run"] - 6.0) < 1e-9
    assert abs(slow.mean_ms["queue"] - (1.0 + 10.0)) < 1e-9  # the slow set's extra 10 ms
    assert abs(sampled.total_ms - 10.0) < 1e-9  # the segments sum to the end-to-end time
    assert slow.threshold_ms is not None and abs(slow.threshold_ms - 12.0) < 1e-9
    d = slow.as_dict()
    assert (
        d["events"] == "slow"
        and d["count"] == 20
        and d["mean_ms"]["queue"] == slow.mean_ms["queue"]
    )
    assert abs(d["total_ms"] - slow.total_ms) < 1e-12


def test_tail_deltas_skip_empty_sets_and_survive_a_restart() -> None:
    same = parse_tail(exposition(10, 40, 0.0, 1.0))
    assert tail_deltas(same, same) == []
    # Nothing slow in the step, and the gauge still 0 (too few events for a P99): no threshold.
    after = parse_tail(exposition(10, 50, 0.0, 1.0))
    (only,) = tail_deltas(same, after)
    assert only.events == "sampled" and only.count == 10 and only.threshold_ms is None
    # The service restarted between the scrapes: its counters start again from zero.
    restarted = parse_tail(exposition(2, 8, 0.01, 1.0))
    stats = {t.events: t for t in tail_deltas(parse_tail(exposition(10, 40, 0.01, 1.0)), restarted)}
    assert stats["slow"].count == 2 and abs(stats["sampled"].mean_ms["run"] - 3.0) < 1e-9


def test_a_segment_the_bench_does_not_know_comes_after_the_known_ones() -> None:
    assert segment_order(["produce", "zz_new", "fetch", "run"]) == [
        "fetch",
        "run",
        "produce",
        "zz_new",
    ]
    assert SEGMENTS == (
        "to_broker",
        "fetch",
        "decode",
        "linger",
        "queue",
        "worker_wait",
        "run",
        "return",
        "produce",
    )


def test_the_services_own_counters_parse() -> None:
    """prometheus_client's own exposition of counters named as the service names them."""
    from prometheus_client import Counter, Gauge

    reg = CollectorRegistry()
    seconds = Counter("streamer_tail_segment_seconds", "x", ["route", "events", "segment"],
                      registry=reg)  # fmt: skip
    events = Counter("streamer_tail_events", "x", ["route", "events"], registry=reg)
    threshold = Gauge("streamer_tail_threshold_seconds", "x", ["route"], registry=reg)
    before = parse_tail(generate_latest(reg).decode())
    for _ in range(4):
        events.labels("duplicate", "slow").inc()
        seconds.labels("duplicate", "slow", "run").inc(0.050)
        seconds.labels("duplicate", "slow", "fetch").inc(0.010)
    threshold.labels("duplicate").set(0.040)
    (slow,) = tail_deltas(before, parse_tail(generate_latest(reg).decode()))
    assert (slow.route, slow.events, slow.count) == ("duplicate", "slow", 4)
    assert list(slow.mean_ms) == ["fetch", "run"] and abs(slow.mean_ms["run"] - 50.0) < 1e-9
    assert slow.threshold_ms is not None and abs(slow.threshold_ms - 40.0) < 1e-9


def test_collector_passes_parse_by_generation() -> None:
    from streamer.bench.stages import GC_METRIC

    reg = CollectorRegistry()
    h = Histogram(GC_METRIC, "x", ["generation"], buckets=(0.001, 0.01), registry=reg)
    before = parse_stages(generate_latest(reg).decode(), GC_METRIC, "generation")
    h.labels("2").observe(0.004)
    h.labels("0").observe(0.0002)
    after = parse_stages(generate_latest(reg).decode(), GC_METRIC, "generation")
    stats = {s.stage: s for s in stage_deltas(before, after)}
    assert stats["2"].count == 1 and stats["2"].p99_le_ms == 10.0
    assert stats["0"].count == 1 and stats["0"].p99_le_ms == 1.0
