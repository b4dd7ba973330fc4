"""docker-compose.yml stays a working single-node Kafka that creates the service's topics.

Nothing here runs Docker (no engine on the development machines); the file is checked as
data against what the rest of the project assumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.kafka.install import KAFKA_VERSION
from streamer.kafka.topics import DEFAULT_TOPICS

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"kafka", "kafka-init"} <= set(compose["services"])


def test_images_are_the_official_kafka_at_the_tested_version(compose: dict[str, Any]) -> None:
    for name in ("kafka", "kafka-init"):
        assert compose["services"][name]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_kafka_publishes_9092_and_advertises_it_to_the_host(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert "9092:9092" in [str(p) for p in kafka["ports"]]
    env = _env(kafka)
    assert "localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    advertised = {item.split("://")[0] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    mapped = {item.split(":")[0] for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert advertised <= listeners <= mapped
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners


def test_kafka_is_single_node_kraft_with_the_test_settings(compose: dict[str, Any]) -> None:
    env = _env(compose["services"]["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert len(env["CLUSTER_ID"]) == 22


def test_kafka_has_a_real_healthcheck(compose: dict[str, Any]) -> None:
    check = compose["services"]["kafka"]["healthcheck"]
    command = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
    assert "/opt/kafka/bin/" in command
    assert check["retries"] >= 1


def test_init_waits_for_a_healthy_broker_and_creates_the_five_topics(
    compose: dict[str, Any],
) -> None:
    init = compose["services"]["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init.get("restart") == "no"
    env = _env(init)
    assert env["TOPICS"].split() == list(DEFAULT_TOPICS)
    script = "\n".join(init["command"])
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    assert "--if-not-exists" in script
    assert env["BOOTSTRAP"].startswith("kafka:")


def test_data_volume_is_declared(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["kafka"]["volumes"]
    names = {str(m).split(":")[0] for m in mounts}
    assert names <= set(compose.get("volumes") or {})


def test_service_dockerfile_copies_paths_that_exist() -> None:
    """The CPU image (deploy/docker/Dockerfile) is built from the repository root."""
    root = COMPOSE.parent
    dockerfile = root / "deploy" / "docker" / "Dockerfile"
    sources = [
        line.split()[1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
    ]
    assert sources, "no COPY lines found"
    for source in sources:
        assert (root / source).exists(), source
    ignore = (root / "deploy" / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore, f"{source} is excluded from the build context"
