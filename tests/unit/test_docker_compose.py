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


# --- the `ops` profile: the service, Prometheus and Grafana ---------------------------------

OPS_SERVICES = ("streamer-intent", "streamer-duplicate", "prometheus", "grafana")
ROOT = COMPOSE.parent


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts: container path -> host path (relative to the compose file)."""
    out = {}
    for mount in service.get("volumes") or []:
        source, target = str(mount).split(":")[:2]
        if source.startswith("./"):
            out[target] = source
    return out


def test_ops_profile_holds_the_service_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in OPS_SERVICES:
        assert services[name]["profiles"] == ["ops"], name
    # A plain `docker compose up -d` still starts only the broker and its topics.
    assert "profiles" not in services["kafka"] and "profiles" not in services["kafka-init"]


def test_streamer_services_run_one_route_each_against_the_compose_broker(
    compose: dict[str, Any],
) -> None:
    from streamer.config import Settings

    settings = {f"STREAMER_{name.upper()}" for name in Settings.model_fields} | {"STREAMER_ROUTES"}
    kafka_env = _env(compose["services"]["kafka"])
    routes, groups = [], set()
    for name in ("streamer-intent", "streamer-duplicate"):
        service = compose["services"][name]
        env = _env(service)
        assert set(env) <= settings, name
        assert env["STREAMER_BOOTSTRAP_SERVERS"] in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        assert service["build"]["context"] == "."
        port = env["STREAMER_METRICS_PORT"]
        assert env["STREAMER_METRICS_HOST"] == "0.0.0.0"
        assert any(str(p).endswith(f":{port}") for p in service["ports"])
        assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])
        grace = float(service["stop_grace_period"].rstrip("s"))
        assert grace > float(env["STREAMER_DRAIN_TIMEOUT_S"])
        routes.append(env["STREAMER_ROUTES"])
        groups.add(env["STREAMER_GROUP_ID"])
    assert sorted(routes) == ["duplicate", "intent"]
    assert len(groups) == 2, "one consumer group per route"


def test_bind_mounts_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name in OPS_SERVICES:
        service = compose["services"][name]
        for source in _mounts(service).values():
            assert (ROOT / source).exists(), f"{name}: {source}"
        for mount in service.get("volumes") or []:
            source = str(mount).split(":")[0]
            if not source.startswith("./"):
                assert source in (compose.get("volumes") or {}), source


def test_prometheus_scrapes_both_services_and_loads_the_rules(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert mounts[config["rule_files"][0]] == "./deploy/prometheus/streamer.rules.yml"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "streamer"  # the not-ready alert reads up{job="streamer"}
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    expected = {
        f"{name}:{_env(compose['services'][name])['STREAMER_METRICS_PORT']}"
        for name in ("streamer-intent", "streamer-duplicate")
    }
    assert targets == expected
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_prometheus_compose_config_is_valid() -> None:
    import subprocess

    from tests.ops_tools import tool

    config = ROOT / "deploy" / "prometheus" / "prometheus.compose.yml"
    out = subprocess.run(
        [str(tool("promtool")), "check", "config", "--syntax-only", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_gets_the_prometheus_source_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    sources = yaml.safe_load(
        (ROOT / mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text()
    )
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    providers = yaml.safe_load(
        (ROOT / mounts["/etc/grafana/provisioning/dashboards"] / "streamer.yml").read_text()
    )
    (provider,) = providers["providers"]
    dashboard = f"{provider['options']['path']}/streamer.json"
    assert mounts[dashboard] == "./deploy/grafana/streamer.json"
    assert _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard
