"""The harness drives real contender subprocesses through a step and accounts every event."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.bench.harness import BenchConfig, PathPlan, run_contender_path

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize("contender", ["naive", "peer"])
async def test_contender_step_on_the_tiny_model(
    contender: str, kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    if contender == "peer":
        pytest.importorskip("faust", reason="faust-streaming (the peer) is not installed")
    cfg = BenchConfig.preset("quick", tiny_cpu_artifact, tmp_path, step_s=2.0, warmup_s=1.0,
                             force_artifact=True)  # fmt: skip
    # a target nobody can miss on a loaded 2-core box: this checks plumbing, not speed
    cfg.plans["intent"] = PathPlan((60_000.0,), 10.0, 2.0, 1, 30.0)
    lines: list[str] = []
    run = await run_contender_path(cfg, "t", kafka_bootstrap, None, contender, "intent",
                                   tmp_path, lines.append)  # fmt: skip
    assert run["status"] == "ok", run.get("reason")
    (step,) = run["steps"]
    assert step["load"]["scheduled"] == 20
    assert step["sink"]["unique"] == 20 and step["sink"]["missing"] == 0
    assert step["sink"]["create_time_stamped"] == 0
    assert step["cpu_s"] > 0  # the contender's process tree was metered
    assert run["max_sustained"] == {"60000.0": 10.0}
    assert any(f"{contender}/intent @" in line for line in lines)
