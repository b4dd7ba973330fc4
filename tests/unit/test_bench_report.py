"""Report and harness wiring: the table picks the knee step, skips are explained, plots render."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from streamer.bench.harness import (
    BenchConfig,
    Topics,
    contender_command,
    outcome_of,
    parse_variant,
    run_contender_path,
)
from streamer.bench.report import best_step, markdown, plots


def stats(p50: float, p99: float, count: int) -> dict[str, Any]:
    return {"count": count, "p50_ms": p50, "p90_ms": p99, "p99_ms": p99, "p999_ms": p99 * 1.2,
            "max_ms": p99 * 1.5, "mean_ms": p50}  # fmt: skip


def step(rate: float, p99: float, n: int = 2000, missing: int = 0) -> dict[str, Any]:
    return {
        "offered_rate": rate,
        "load": {"duration_s": 10.0, "p99_behind_ms": 0.5, "fell_behind": False},
        "sink": {"unique": n, "missing": missing, "duplicates": 0, "throughput": n / 10,
                 "broker": stats(p99 / 3, p99, n), "observed": stats(p99 / 2, p99 + 2, n)},
        "cpu_s_per_1k": 1.25,
        "broker_cpu_s_per_1k": 0.5,
        "contender_alive": True,
    }  # fmt: skip


def results() -> dict[str, Any]:
    return {
        "meta": {
            "date_utc": "2026-11-27T12:00:00Z", "command": "streamer bench --quick",
            "git_commit": "abc123", "git_dirty": False,
            "machine": {"cpu": "test cpu", "cores": 2, "platform": "linux"},
            "broker": {"kind": "local Apache Kafka (KRaft)", "version": "4.1.1"},
            "artifact": {"path": "/a", "model_name": "m", "model_version": "1", "target": "cpu"},
            "step_s": 10.0, "arrival": "constant", "partitions": 4,
        },
        "runs": [
            {"contender": "naive", "route": "intent", "status": "ok", "targets_ms": [10.0, 50.0],
             "steps": [step(100, 8.0), step(200, 40.0, n=500), step(400, 900.0, missing=7)],
             "max_sustained": {"10.0": 100, "50.0": 200}},
            {"contender": "streamer", "route": "intent", "status": "skipped", "targets_ms": [10.0],
             "steps": [], "reason": "streamer failed to start: exited with code 3"},
            {"contender": "model-only", "route": "intent", "status": "ok", "cpu_s_per_1k": 0.4,
             "buckets": [{"batch": 32, "seq_len": 16, "median_ms": 30.0, "p99_ms": 35.0,
                          "items_per_s": 1066.0, "iters": 10}]},
        ],
    }  # fmt: skip


def test_best_step_is_the_max_sustained_one() -> None:
    run = results()["runs"][0]
    best = best_step(run, 50.0)
    assert best is not None and best["offered_rate"] == 200
    assert best_step(results()["runs"][1], 10.0) is None


def test_markdown_has_the_knee_rows_skips_and_provenance() -> None:
    md = markdown(results())
    assert "| naive | intent | 10 ms | 100 | 2.67 | 8.00 |" in md
    assert "| naive | intent | 50 ms | 200 |" in md
    assert "500*" in md  # a P99 from 500 results is flagged
    assert "streamer/intent: skipped: streamer failed to start" in md
    assert "abc123" in md and "4.1.1" in md and "test cpu" in md
    assert "| intent | 32 | 16 | 30.00 | 35.00 | 1,066 |" in md
    assert md.count("| naive | intent | ") == 2 + 3  # summary rows + every step


def test_plots_are_written(tmp_path: Path) -> None:
    written = plots(results(), tmp_path)
    assert {p.name for p in written} == {"latency-intent.png", "throughput-intent.png"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_stage_plot_for_a_contender_with_metrics(tmp_path: Path) -> None:
    doc = results()
    staged = step(100, 8.0)
    staged["stages"] = [
        {"route": "intent", "stage": name, "count": 10, "mean_ms": ms, "p99_le_ms": ms * 2}
        for name, ms in (("produce", 2.0), ("fetch", 1.0), ("model", 3.0))
    ]
    doc["runs"][1] = {"contender": "streamer", "route": "intent", "status": "ok",
                      "targets_ms": [10.0], "steps": [staged], "max_sustained": {"10.0": 100}}  # fmt: skip
    written = {p.name for p in plots(doc, tmp_path)}
    assert "stages-intent.png" in written


def test_outcome_uses_broker_latency_and_counts_a_dead_contender_as_missing() -> None:
    s = step(100, 8.0)
    assert outcome_of(s).meets(10.0)
    s["contender_alive"] = False
    assert not outcome_of(s).meets(10.0)


def test_topics_are_fresh_per_run_and_contender() -> None:
    a, b = Topics.fresh("r1", "naive", "intent"), Topics.fresh("r2", "naive", "intent")
    assert not set(a.all()) & set(b.all())
    assert len(set(a.all())) == 5


def test_streamer_is_configured_through_its_env(tmp_path: Path) -> None:
    cfg = BenchConfig.preset("quick", tmp_path, tmp_path)
    topics = Topics.fresh("r", "streamer", "duplicate")
    argv, env, port = contender_command("streamer", cfg, "127.0.0.1:9", "duplicate", topics, "g")
    assert argv == [sys.executable, "-m", "streamer", "run"]
    assert env["STREAMER_ROUTES"] == "duplicate"
    assert env["STREAMER_TOPIC_PAIRS"] == topics.source
    assert env["STREAMER_TOPIC_DUPLICATES"] == topics.results
    assert env["STREAMER_TOPIC_QUERIES"] == topics.other_source
    assert env["STREAMER_METRICS_PORT"] == str(port) and port
    argv, _, port = contender_command("naive", cfg, "127.0.0.1:9", "intent", topics, "g")
    assert port is None and "streamer.bench.contenders.naive" in argv


def test_quick_preset_fits_the_ten_minute_budget(tmp_path: Path) -> None:
    cfg = BenchConfig.preset("quick", tmp_path, tmp_path)
    # the budget is checked between steps: one more step and a contender's stop may overrun it
    overrun = max(cfg.step_s + p.drain_s for p in cfg.plans.values()) + 20
    assert cfg.budget_s is not None and cfg.budget_s + overrun < 10 * 60


async def test_a_spent_budget_skips_the_run_before_touching_kafka(tmp_path: Path) -> None:
    cfg = BenchConfig.preset("quick", tmp_path, tmp_path)
    run = await run_contender_path(cfg, "r", "127.0.0.1:1", None, "naive", "intent", tmp_path,
                                   print, deadline=0.0)  # fmt: skip
    assert run["status"] == "skipped" and "budget" in run["reason"]


def test_mix_ceiling_table_and_each_contenders_share_of_it() -> None:
    doc = results()
    doc["runs"][2]["mix"] = [
        {"kind": "mix", "threads": 1, "events": 256, "batches": 64, "mean_rows": 4.0,
         "passes": 3, "items_per_s": 400.0},
        {"kind": "mix", "threads": 2, "events": 256, "batches": 64, "mean_rows": 4.0,
         "passes": 5, "items_per_s": 500.0},
    ]  # fmt: skip
    md = markdown(doc)
    assert "| intent | 1 | 256 | 64 | 4.0 | 400 |" in md
    assert "| contender | route | P99 target | max sustained (/s) | share of 1-thread mix " in md
    assert "| naive | intent | 10 ms | 100 | 25% | 20% |" in md
    assert "| naive | intent | 50 ms | 200 | 50% | 40% |" in md


def test_a_variant_is_the_service_with_its_env_overrides(tmp_path: Path) -> None:
    label, env = parse_variant("linger:STREAMER_DISPATCH_WHEN_IDLE=false;STREAMER_WORKERS=2")
    assert label == "linger"
    assert env == {"STREAMER_DISPATCH_WHEN_IDLE": "false", "STREAMER_WORKERS": "2"}
    cfg = BenchConfig.preset("quick", tmp_path, tmp_path, variants={label: env})
    topics = Topics.fresh("r", "streamer-linger", "intent")
    argv, got, port = contender_command(
        "streamer-linger", cfg, "127.0.0.1:9", "intent", topics, "g"
    )
    assert argv == [sys.executable, "-m", "streamer", "run"] and port
    assert got["STREAMER_DISPATCH_WHEN_IDLE"] == "false" and got["STREAMER_WORKERS"] == "2"
    assert got["STREAMER_TOPIC_QUERIES"] == topics.source
    _, plain, _ = contender_command("streamer", cfg, "127.0.0.1:9", "intent", topics, "g")
    assert plain.get("STREAMER_WORKERS") == os.environ.get("STREAMER_WORKERS")
    for bad in ("linger", "Bad:STREAMER_X=1", "x:PATH=/bin", "x:"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_a_variant_can_run_another_source_tree(tmp_path: Path) -> None:
    """Before/after A/B of a code change: the variant's PYTHONPATH picks the service's code."""
    label, env = parse_variant("before:PYTHONPATH=/tmp/before")
    cfg = BenchConfig.preset("quick", tmp_path, tmp_path, variants={label: env})
    topics = Topics.fresh("r", "streamer-before", "duplicate")
    argv, got, _ = contender_command(
        "streamer-before", cfg, "127.0.0.1:9", "duplicate", topics, "g"
    )
    assert got["PYTHONPATH"] == "/tmp/before"
    assert argv[1] == "-P"  # or the working directory's tree would shadow PYTHONPATH
    # An older tree reads the route under its old name.
    assert got["STREAMER_ROUTES"] == got["STREAMER_PATHS"] == "duplicate"


def test_an_interrupted_run_leaves_no_contender_behind() -> None:
    """Contenders run in their own session; kill_live_contenders stops every one still up."""
    import subprocess

    from streamer.bench import harness

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    harness._LIVE_GROUPS.add(proc.pid)
    assert harness.kill_live_contenders(grace_s=2.0) == [proc.pid]
    assert proc.wait(timeout=5) is not None
    assert not harness._LIVE_GROUPS


def test_an_emulated_run_says_so_and_shares_of_passthrough_are_reported() -> None:
    res = results()
    res["meta"]["emulated_device"] = "h200"
    res["runs"].append(
        {"contender": "passthrough", "route": "intent", "status": "ok", "targets_ms": [10.0, 50.0],
         "steps": [step(400, 5.0), step(800, 9.0)], "max_sustained": {"10.0": 800, "50.0": 800}}
    )  # fmt: skip
    md = markdown(res)
    assert md.splitlines()[0].endswith("(EMULATED h200 device: no model ran)")
    assert "EMULATED h200 accelerator" in md
    assert "| naive | intent | 10 ms | 100 | 12% |" in md
    assert "| passthrough | intent | 50 ms | 800 | 100% |" in md
    assert "EMULATED" not in markdown(results())


def test_emulation_reaches_every_contender(tmp_path: Path) -> None:
    cfg = BenchConfig.preset("emulated", tmp_path, tmp_path)
    assert cfg.emulate == "h200" and cfg.patience == 1
    topics = Topics.fresh("r", "naive", "intent")
    argv, _, _ = contender_command("naive", cfg, "127.0.0.1:9", "intent", topics, "g")
    assert argv[-2:] == ["--emulate", "h200"]
    _, env, _ = contender_command("streamer", cfg, "127.0.0.1:9", "intent", topics, "g")
    assert env["STREAMER_EMULATE"] == "h200"
    argv, _, _ = contender_command("passthrough", cfg, "127.0.0.1:9", "intent", topics, "g")
    assert "streamer.bench.contenders.passthrough" in argv


# --------------------------------------------------------------------------- tail attribution

SLOW = {"fetch": 1.5, "decode": 0.2, "linger": 0.5, "queue": 6.0, "worker_wait": 0.4,
        "run": 2.0, "return": 0.1, "produce": 1.3}  # fmt: skip
SAMPLED = {"fetch": 1.0, "decode": 0.1, "linger": 0.4, "queue": 0.2, "worker_wait": 0.2,
           "run": 1.9, "return": 0.1, "produce": 1.1}  # fmt: skip


def tail(slow_n: int, threshold: float | None, scale: float = 1.0) -> list[dict[str, Any]]:
    def entry(kind: str, n: int, means: dict[str, float]) -> dict[str, Any]:
        mean = {k: v * scale for k, v in means.items()}
        return {"route": "intent", "events": kind, "count": n, "threshold_ms": threshold,
                "total_ms": sum(mean.values()), "mean_ms": mean}  # fmt: skip

    out = [entry("sampled", 125, SAMPLED)]
    if slow_n:
        out.append(entry("slow", slow_n, SLOW))
    return out


def tailed_results() -> dict[str, Any]:
    doc = results()
    steps = [step(100.0, 12.0), step(100.0, 7.0), step(200.0, 8.0), step(400.0, 900.0)]
    steps[0]["superseded"] = True
    steps[1]["retake"] = True
    for s, (n, thr, k) in zip(steps, [(20, 9.0, 1.0), (21, 7.0, 1.0), (0, None, 1.0),
                                      (40, 850.0, 60.0)], strict=True):  # fmt: skip
        s["tail"] = tail(n, thr, k)
    steps[2]["stages"] = [{"route": "intent", "stage": "model", "count": 5, "mean_ms": 2.0,
                           "p99_le_ms": 3.0}]  # fmt: skip
    doc["runs"][1] = {"contender": "streamer", "route": "intent", "status": "ok",
                      "targets_ms": [10.0], "steps": steps, "max_sustained": {"10.0": 200.0},
                      "warmup": {"offered_rate": 100, "duration_s": 5.0, "sink": {}}}  # fmt: skip
    return doc


def test_the_tail_section_has_a_row_per_step_with_the_slow_and_sampled_means() -> None:
    md = markdown(tailed_results())
    assert "## Where the slowest events spent their time" in md
    assert "**streamer / intent**" in md
    head = (
        "| offered/s | threshold ms | slow events | fetch | decode | linger | queue | "
        "worker_wait | run | return | produce | total ms | largest share | most above sampled |"
    )
    assert head in md
    table = md.split("**streamer / intent**")[1].split("\n\n")[1].splitlines()
    rows = table[2:]
    assert len(rows) == 4  # one row per step
    # the cold first step, marked; slow share of the step's 2,000 results; queue in bold
    assert rows[0].startswith(
        "| 100.0 (1st, re-measured) | 9.0 | 20 (1.0%) | 1.5 (1.0) | 0.20 (0.10) |"
    )
    assert "| **6.0** (0.20) |" in rows[0]
    assert "| 12.0 (5.0) | queue 50% | queue +5.8 |" in rows[0]
    assert rows[1].startswith("| 100.0 (retake) | 7.0 | 21 (1.1%) |")
    # nothing slow in the step (the gauge not set yet): dashes beside the sample's means
    assert rows[2].startswith("| 200.0 | - | 0 (0.0%) | - (1.0) |")
    assert "| - (5.0) | - | - |" in rows[2]
    overloaded = next(line for line in md.splitlines() if line.startswith("| 400.0 | 850 |"))
    assert (
        "| **360** (12.0) |" in overloaded
        and "| 720 (300) | queue 50% | queue +348 |" in overloaded
    )
    assert "- warm-up: 5 s at the first step's rate" in md
    assert "- first step re-measured: streamer/intent at 100.0/s" in md
    assert "## Where the slowest" not in markdown(results())


def test_a_superseded_step_is_never_the_knee_step_and_is_marked_in_every_step() -> None:
    doc = tailed_results()
    run = doc["runs"][1]
    run["max_sustained"] = {"10.0": 100.0}
    best = best_step(run, 10.0)
    assert best is not None and best.get("retake")  # not the failed first try at 100/s
    md = markdown(doc)
    assert "| streamer | intent | 100.0 (1st, re-measured) | 2,000 |" in md
    assert "| streamer | intent | 100.0 (retake) | 2,000 |" in md


def test_stage_chart_with_tail_attribution_and_with_batch_stages(tmp_path: Path) -> None:
    doc = tailed_results()
    staged = step(100, 8.0)
    staged["stages"] = [
        {"route": "intent", "stage": name, "count": 10, "mean_ms": ms, "p99_le_ms": ms * 2}
        for name, ms in (("produce", 2.0), ("fetch", 1.0), ("model", 300.0))
    ]
    doc["runs"].append({"contender": "streamer-before", "route": "intent", "status": "ok",
                        "targets_ms": [10.0], "steps": [staged, step(200, 9.0)]})  # fmt: skip
    written = plots(doc, tmp_path)
    assert [p.name for p in written].count("stages-intent.png") == 1  # one file per route
    chart = tmp_path / "stages-intent.png"
    assert chart.stat().st_size > 5000


def test_a_segment_keeps_its_colour_in_every_chart() -> None:
    from streamer.bench.report import part_colours

    everything = part_colours(["fetch", "decode", "queue", "run", "produce", "model", "new"])
    some = part_colours(["produce", "run"])
    assert some["produce"] == everything["produce"] and some["run"] == everything["run"]
    assert everything["model"] == everything["run"]  # the batch stage of the model run
    assert len({everything[n] for n in ("fetch", "decode", "queue", "run", "produce", "new")}) == 6


async def test_warm_up_at_the_first_rate_then_a_failed_first_step_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_contender_path with Kafka and the contender faked: what it measures, in order."""
    from streamer.bench import harness

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    class FakeContender:
        def __init__(self, *args: Any) -> None:
            self.env: dict[str, str] = {}

        async def start(self, timeout_s: float) -> None:
            return None

        def alive(self) -> bool:
            return True

        async def stop(self) -> None:
            return None

    class FakeSink:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        start = stop = nothing

    measured: list[tuple[float, float]] = []
    p99 = iter([11.0, 7.0, 7.0, 60.0])

    async def fake_step(cfg: Any, bootstrap: str, topics: Any, factory: Any, sink: Any,
                        contender: Any, broker: Any, rate: float, duration_s: float,
                        *rest: Any) -> dict[str, Any]:  # fmt: skip
        measured.append((rate, duration_s))
        return step(rate, 3.0 if len(measured) == 1 else next(p99))

    monkeypatch.setattr(harness, "create_topics", nothing)
    monkeypatch.setattr(harness, "delete_topics", nothing)
    monkeypatch.setattr(harness, "Contender", FakeContender)
    monkeypatch.setattr(harness, "Sink", FakeSink)
    monkeypatch.setattr(harness, "EventFactory", lambda *a: None)
    monkeypatch.setattr(harness, "measure_step", fake_step)
    cfg = BenchConfig.preset("quick", tmp_path, tmp_path, routes=("intent",))
    run = await run_contender_path(cfg, "r", "127.0.0.1:1", None, "naive", "intent", tmp_path,
                                   lambda *_: None)  # fmt: skip
    start = cfg.plans["intent"].start_rate
    assert measured[0] == (start, cfg.warmup_s) and cfg.warmup_s >= 5.0  # warm-up first
    assert [r for r, _ in measured[1:]] == [start, start, start * 2, start * 4]
    assert run["warmup"]["offered_rate"] == start and run["warmup"]["duration_s"] == cfg.warmup_s
    first, retake = run["steps"][0], run["steps"][1]
    assert first.get("superseded") and not first.get("retake")
    assert retake.get("retake") and not retake.get("superseded")
    assert run["max_sustained"]["10.0"] == start * 2  # the cold first step did not decide it
    assert best_step(run, 10.0) is run["steps"][2]
