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
    # Explicit entry point: the image's ENTRYPOINT may differ between builds.
    assert container["entryPoint"] + container["command"] == ["python", "-m", "streamer", "run"]
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


def test_artifact_is_the_path_the_image_bakes() -> None:
    """The image bakes the compiled model at /opt/streamer/model (deploy/docker/Dockerfile)."""
    for path in ECS.glob("*.json"):
        container = json.loads(path.read_text())["containerDefinitions"][0]
        env = {e["name"]: e["value"] for e in container["environment"]}
        assert env["STREAMER_ARTIFACT"] == "/opt/streamer/model", path.name


def test_inferentia_task_follows_the_current_neuron_runtime() -> None:
    """Neuron runtime 2.x is a library inside the process: no neuron-rtd sidecar or socket
    (removed in Neuron 1.16), no IPC_LOCK; the task maps the instance's /dev/neuron devices and
    runs one worker per NeuronCore (4 per Inferentia chip on inf1)."""
    task = json.loads((ECS / "task-definition.inf1.json").read_text())
    text = json.dumps(task)
    assert "neuron-rtd" not in text and "IPC_LOCK" not in text and "/sock" not in text
    (container,) = task["containerDefinitions"]
    devices = container["linuxParameters"]["devices"]
    assert all(d["hostPath"].startswith("/dev/neuron") for d in devices)
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert int(env["STREAMER_WORKERS"]) == 4 * len(devices)
    assert "NEURON_RT_VISIBLE_CORES" not in env, "set per worker by the service"
    assert container["healthCheck"]["command"][1].count("/healthz") == 1
