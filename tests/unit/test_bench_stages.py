"""Stage breakdown from two Prometheus scrapes of the service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamer.bench.stages import parse_stages, stage_deltas


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
