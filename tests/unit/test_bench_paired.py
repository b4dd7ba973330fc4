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


def _tail(n: int, queue_ms: float, threshold: float) -> list[dict]:
    def entry(kind: str, count: int, queue: float) -> dict:
        mean = {"fetch": 1.0, "queue": queue, "run": 2.0, "produce": 1.0}
        return {"route": "intent", "events": kind, "count": count, "threshold_ms": threshold,
                "total_ms": sum(mean.values()), "mean_ms": mean}  # fmt: skip

    return [entry("slow", n, queue_ms), entry("sampled", 50, 0.5)]


def test_the_slow_events_attribution_is_pooled_over_rounds_and_reported() -> None:
    from streamer.bench.paired import _tail_line, tail_summary

    meta = {
        "date_utc": "d", "command": "c", "git_commit": "g", "machine": {"cpu": "x", "cores": 2},
        "artifact": {"model_name": "m", "model_version": "v"}, "step_s": 15, "partitions": 4,
    }  # fmt: skip
    steps = [_step("alos", 0, 40.0, 50.0, None), _step("alos", 1, 60.0, 70.0, None),
             _step("eos", 0, 40.0, 200.0, "observed")]  # fmt: skip
    for s in steps:
        s["sink"]["unique"] = 750
    steps[0]["tail"] = _tail(10, 10.0, 9.0)
    steps[1]["tail"] = _tail(30, 2.0, 11.0)  # eos: exactly-once is not attributed
    doc = {"meta": meta, "route": "intent", "steps": steps,
           "warmup": {"offered_rate": 50.0, "duration_s": 5.0, "p99_ms": {}}}  # fmt: skip
    (row,) = tail_summary(doc)
    assert (row["variant"], row["rounds"], row["results"]) == ("alos", 2, 1500)
    slow = row["slow"]
    assert slow["count"] == 40 and slow["threshold_ms"] == 10.0
    assert abs(slow["mean_ms"]["queue"] - (10 * 10.0 + 30 * 2.0) / 40) < 1e-9  # count-weighted
    assert row["sampled"]["count"] == 100
    text = report(doc)
    assert "warmed up first, unmeasured, 5 s at 50/s" in text
    assert (
        "| variant | offered/s | rounds | threshold ms | slow events | fetch | queue | run | "
        in text
    )
    assert "| alos | 50 | 2 | 10.0 | 40 (2.7%) | 1.0 (1.0) | **4.0** (0.50) | 2.0 (2.0) |" in text
    assert "| queue 50% | queue +3.5 |" in text
    line = _tail_line(steps[0], "intent")
    assert "slow 10 > 9.0 ms" in line and "queue 10.00 (0.50)" in line and "largest queue" in line
    assert _tail_line(steps[2], "intent") == ""
