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
