"""The ECS task definitions stay valid JSON with the fields ECS and the service need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ECS = Path(__file__).resolve().parents[2] / "deploy" / "ecs"


@pytest.mark.parametrize("name", ["task-definition.cpu.json", "task-definition.inf1.json"])
def test_task_definition_fields(name: str) -> None:
    """Each task definition runs `streamer run` with a broker, an artifact and a metrics port."""
    task = json.loads((ECS / name).read_text())
    assert task["family"].startswith("streamer")
    (container,) = task["containerDefinitions"]
    assert container["command"][:2] == ["streamer", "run"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert {
        "STREAMER_BOOTSTRAP_SERVERS",
        "STREAMER_ARTIFACT",
        "STREAMER_METRICS_PORT",
    } <= env.keys()
    assert container["portMappings"][0]["containerPort"] == int(env["STREAMER_METRICS_PORT"])
    # ECS must wait longer than the drain deadline before SIGKILL.
    assert container["stopTimeout"] > float(env.get("STREAMER_DRAIN_TIMEOUT_S", "10"))
    assert container["linuxParameters"]["sharedMemorySize"] >= 64


def test_env_names_are_settings() -> None:
    """Every STREAMER_* variable in the task definitions is a real setting."""
    from streamer.config import Settings

    fields = {f"STREAMER_{name.upper()}" for name in Settings.model_fields}
    for path in ECS.glob("*.json"):
        container = json.loads(path.read_text())["containerDefinitions"][0]
        names = [e["name"] for e in container["environment"]]
        names += [s["name"] for s in container.get("secrets", [])]
        assert set(names) <= fields, path.name
