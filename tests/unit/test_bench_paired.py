"""The paired A/B report: medians over rounds, each variant by its own clock."""

from __future__ import annotations

from streamer.bench.paired import report


def _step(variant: str, rnd: int, p99: float, observed: float, clock: str | None) -> dict:
    sink = {
        "broker": {"p50_ms": p99 / 4, "p99_ms": p99},
        "observed": {"p50_ms": observed / 4, "p99_ms": observed},
        "throughput": 50.0,
        "missing": 0,
        "duplicates": 0,
    }
    step = {"variant": variant, "round": rnd, "offered_rate": 50.0, "sink": sink,
            "cpu_s_per_1k": 4.0}  # fmt: skip
    if clock:
        step["clock"] = clock
    return step


def test_report_takes_medians_and_the_observed_clock_for_exactly_once() -> None:
    meta = {
        "date_utc": "d", "command": "c", "git_commit": "g", "machine": {"cpu": "x", "cores": 2},
        "artifact": {"model_name": "m", "model_version": "v"}, "step_s": 15, "partitions": 4,
    }  # fmt: skip
    steps = [
        _step("alos", 0, 40.0, 50.0, None),
        _step("alos", 1, 60.0, 70.0, None),
        _step("alos", 2, 500.0, 510.0, None),
        _step("eos", 0, 40.0, 200.0, "observed"),
        _step("eos", 1, 40.0, 300.0, "observed"),
    ]
    text = report({"meta": meta, "route": "intent", "steps": steps})
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines()[10:]}
    assert rows["alos"][5].strip() == "60.0"  # the median of 40, 60, 500 by the broker clock
    assert rows["eos"][5].strip() == "250.0"  # by the observed clock, not the append time
