"""Pure parts of the local Kafka recipe: config rendering, ports, state, install marker.

No JVM, no broker, no subprocess: these run in milliseconds.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path
from typing import ClassVar

import pytest

from streamer.kafka import install as install_mod
from streamer.kafka.install import (
    DEPLOY_DIR,
    KAFKA_VERSION,
    MARKER_NAME,
    is_installed,
    kafka_home,
    maven_command,
)
from streamer.kafka.local_broker import (
    BrokerState,
    adopt_cds_archive,
    cds_archive_path,
    cds_flags,
    choose_port,
    free_port,
    java_command,
    main,
    new_cluster_id,
    parse_properties,
    pid_is_kafka,
    port_is_free,
    read_state,
    render_server_properties,
    state_path,
    summarize_errors,
    write_state,
)
from streamer.kafka.probe import split_bootstrap
from streamer.kafka.topics import DEFAULT_TOPICS, topic_partitions
from tests.fixtures.kafka import plan_broker

TEMPLATE = (DEPLOY_DIR / "server.properties.template").read_text()


def _render(**overrides: object) -> dict[str, str]:
    text = render_server_properties(
        TEMPLATE,
        node_id=1,
        host="127.0.0.1",
        port=19092,
        controller_port=19093,
        data_dir=Path("/tmp/kafka-data"),
        overrides=overrides or None,
    )
    return parse_properties(text)


def test_rendered_config_is_a_single_kraft_node_on_loopback() -> None:
    props = _render()
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == "/tmp/kafka-data"
    assert "$" not in "".join(props.values()), "a placeholder was left unrendered"


def test_rendered_config_has_the_settings_tests_rely_on() -> None:
    props = _render()
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["num.partitions"] == "1"


def test_overrides_win_and_booleans_are_java_spelled() -> None:
    props = _render(**{"num.partitions": 6, "auto.create.topics.enable": True})
    assert props["num.partitions"] == "6"
    assert props["auto.create.topics.enable"] == "true"


def test_same_port_for_broker_and_controller_is_rejected() -> None:
    with pytest.raises(ValueError, match="different ports"):
        render_server_properties(
            TEMPLATE, node_id=1, host="h", port=1, controller_port=1, data_dir=Path("/d")
        )


def test_parse_properties_skips_comments_and_later_keys_win() -> None:
    text = "# comment\n! also comment\n\na=1\nb = two words \na=3\n"
    assert parse_properties(text) == {"a": "3", "b": "two words"}


def test_cluster_id_is_kafka_uuid_format() -> None:
    ids = {new_cluster_id() for _ in range(2000)}  # ~31 would start with "-" if allowed
    assert len(ids) == 2000
    for cid in ids:
        assert len(cid) == 22 and "=" not in cid
        assert not cid.startswith("-"), "kafka-storage would read it as an option"
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_choose_port_prefers_a_free_preferred_port() -> None:
    port = free_port()
    assert choose_port([port]) == port
    assert choose_port([None, port]) == port


def test_choose_port_skips_a_busy_or_avoided_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not port_is_free(taken)
        chosen = choose_port([taken])
        assert chosen != taken and port_is_free(chosen)
    spare = free_port()
    assert choose_port([spare], avoid=[spare]) != spare


def test_free_port_honours_avoid() -> None:
    first = free_port()
    assert free_port(avoid=[first]) != first


def test_java_command_puts_flags_before_the_main_class() -> None:
    cmd = java_command(
        "/usr/bin/java",
        "/libs/*",
        "kafka.Kafka",
        ["/w/server.properties"],
        heap="256m",
        log4j_config=Path("/c/log4j2.properties"),
        jvm_flags=["-XX:+UseSerialGC"],
    )
    assert cmd == [
        "/usr/bin/java",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-Dlog4j2.configurationFile=/c/log4j2.properties",
        "-cp",
        "/libs/*",
        "kafka.Kafka",
        "/w/server.properties",
    ]


def test_state_round_trip_and_bootstrap(tmp_path: Path) -> None:
    path = tmp_path / "run" / "state.json"
    state = BrokerState(
        pid=123,
        host="127.0.0.1",
        port=9092,
        controller_port=9093,
        workdir=str(tmp_path),
        version=KAFKA_VERSION,
        started_at=1.5,
    )
    write_state(path, state)
    assert read_state(path) == state
    assert state.bootstrap_servers == "127.0.0.1:9092"
    assert not list(path.parent.glob("*.tmp")), "atomic write left its temp file"


@pytest.mark.parametrize("content", ["", "{not json", '{"pid": 1}', "[]"])
def test_unreadable_state_means_not_running(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    assert read_state(path) is None
    assert read_state(tmp_path / "missing.json") is None


def test_pid_is_kafka_rejects_other_and_dead_processes() -> None:
    assert not pid_is_kafka(os.getpid())
    assert not pid_is_kafka(2**22 + 12345)


def test_kafka_home_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMER_KAFKA_HOME", str(tmp_path))
    assert kafka_home() == tmp_path
    assert state_path() == tmp_path / "run" / "state.json"
    monkeypatch.delenv("STREAMER_KAFKA_HOME")
    assert kafka_home() == Path.home() / ".cache" / "streamer" / "kafka"


def _fake_install(home: Path, jars: list[str], version: str = KAFKA_VERSION) -> Path:
    vdir = home / version
    (vdir / "libs").mkdir(parents=True)
    for jar in jars:
        (vdir / "libs" / jar).write_bytes(b"jar")
    (vdir / MARKER_NAME).write_text(json.dumps({"version": version, "jars": jars}))
    return vdir


def test_install_marker_must_match_the_jars_on_disk(tmp_path: Path) -> None:
    assert not is_installed(home=tmp_path)
    vdir = _fake_install(tmp_path, ["kafka_2.13-x.jar", "kafka-tools-x.jar", "kafka-clients-x.jar"])
    assert is_installed(home=tmp_path)
    (vdir / "libs" / "kafka-clients-x.jar").unlink()
    assert not is_installed(home=tmp_path), "a deleted jar must trigger a re-install"


def test_install_marker_of_another_version_does_not_count(tmp_path: Path) -> None:
    vdir = _fake_install(tmp_path, ["kafka_2.13-x.jar"])
    (vdir / MARKER_NAME).write_text(json.dumps({"version": "0.0.1", "jars": ["kafka_2.13-x.jar"]}))
    assert not is_installed(home=tmp_path)
    (vdir / MARKER_NAME).write_text("garbage")
    assert not is_installed(home=tmp_path)


def test_installed_cache_is_reused_without_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_install(tmp_path, ["kafka_2.13-x.jar", "kafka-tools-x.jar"])

    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("maven must not run when the cache is complete")

    monkeypatch.setattr(install_mod.subprocess, "run", no_maven)
    result = install_mod.install(home=tmp_path)
    assert not result.fresh
    assert result.classpath == str(tmp_path / KAFKA_VERSION / "libs" / "*")


def test_maven_command_pins_version_and_output(tmp_path: Path) -> None:
    cmd = maven_command(DEPLOY_DIR / "pom.xml", "4.0.1", tmp_path / "out")
    assert cmd[0] == "mvn" and "-B" in cmd
    assert "-Dkafka.version=4.0.1" in cmd
    assert f"-DoutputDirectory={tmp_path / 'out'}" in cmd
    assert "dependency:copy-dependencies" in cmd


def test_pom_declares_kafka_and_a_log4j2_binding() -> None:
    pom = (DEPLOY_DIR / "pom.xml").read_text()
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in pom
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<artifactId>log4j-core</artifactId>" in pom
    assert "<artifactId>kafka-tools</artifactId>" in pom  # the console clients of the interop tests


def test_a_cache_without_the_tools_jar_is_installed_again(tmp_path: Path) -> None:
    """Caches made before kafka-tools joined the pom lack the console clients: not complete."""
    _fake_install(tmp_path, ["kafka_2.13-x.jar", "kafka-clients-x.jar"])
    assert not is_installed(home=tmp_path)


def test_cds_flags_use_an_existing_archive_else_record_one(tmp_path: Path) -> None:
    archive, pending = tmp_path / "a.jsa", tmp_path / "a.tmp"
    assert cds_flags(archive, pending) == [f"-XX:ArchiveClassesAtExit={pending}"]
    assert cds_flags(archive, None) == []
    archive.write_bytes(b"cds")
    assert cds_flags(archive, pending) == [f"-XX:SharedArchiveFile={archive}"]


def test_cds_archive_name_depends_on_the_jvm(tmp_path: Path) -> None:
    java_a, java_b = tmp_path / "a" / "java", tmp_path / "b" / "java"
    for java in (java_a, java_b):
        java.parent.mkdir()
        java.write_bytes(b"#!")
    path_a = cds_archive_path(str(java_a), "4.1.1", home=tmp_path)
    assert path_a == cds_archive_path(str(java_a), "4.1.1", home=tmp_path)
    assert path_a != cds_archive_path(str(java_b), "4.1.1", home=tmp_path)
    assert path_a.parent == tmp_path / "4.1.1"


def test_cds_archive_adopted_only_after_a_clean_exit(tmp_path: Path) -> None:
    archive = tmp_path / "final.jsa"
    partial = tmp_path / "killed.tmp"
    partial.write_bytes(b"half")
    assert not adopt_cds_archive(partial, archive, clean_exit=False)
    assert not archive.exists() and not partial.exists()
    empty = tmp_path / "empty.tmp"
    empty.write_bytes(b"")
    assert not adopt_cds_archive(empty, archive, clean_exit=True)
    good = tmp_path / "good.tmp"
    good.write_bytes(b"archive")
    assert adopt_cds_archive(good, archive, clean_exit=True)
    assert archive.read_bytes() == b"archive"
    second = tmp_path / "second.tmp"
    second.write_bytes(b"other")
    assert not adopt_cds_archive(second, archive, clean_exit=True), "first writer wins"
    assert archive.read_bytes() == b"archive" and not second.exists()


def test_cli_status_and_down_without_a_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMER_KAFKA_HOME", str(tmp_path))
    assert main(["status"]) == 1
    # A stale state file (dead pid) must not make `status` lie or `down` kill anything.
    write_state(
        state_path(),
        BrokerState(2**22 + 7, "127.0.0.1", 1, 2, str(tmp_path), KAFKA_VERSION, 0.0),
    )
    assert main(["status"]) == 1
    assert main(["down"]) == 0
    assert not state_path().exists()
    assert "not running" in capsys.readouterr().out


def test_split_bootstrap() -> None:
    assert split_bootstrap("a:1, b:2") == [("a", 1), ("b", 2)]
    assert split_bootstrap("kafka") == [("kafka", 9092)]
    with pytest.raises(ValueError):
        split_bootstrap(" , ")


def test_topic_partitions_defaults_to_the_five_topics() -> None:
    assert topic_partitions(3) == dict.fromkeys(DEFAULT_TOPICS, 3)
    assert len(DEFAULT_TOPICS) == 5
    with pytest.raises(ValueError):
        topic_partitions(0)


@pytest.mark.parametrize(
    ("env", "docker", "expected"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}, True, "external"),
        ({}, True, "docker"),
        ({}, False, "local"),
        ({"STREAMER_TEST_KAFKA": "local"}, True, "local"),
        ({"STREAMER_TEST_KAFKA": "local", "KAFKA_BOOTSTRAP_SERVERS": "k:1"}, True, "local"),
        ({"STREAMER_TEST_KAFKA": "docker"}, False, "docker"),
        ({"STREAMER_TEST_KAFKA": "external", "KAFKA_BOOTSTRAP_SERVERS": "k:1"}, False, "external"),
    ],
)
def test_plan_broker(env: dict[str, str], docker: bool, expected: str) -> None:
    assert plan_broker(env, docker_available=lambda: docker) == expected


@pytest.mark.parametrize("env", [{"STREAMER_TEST_KAFKA": "external"}, {"STREAMER_TEST_KAFKA": "x"}])
def test_plan_broker_rejects_impossible_choices(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        plan_broker(env, docker_available=lambda: False)


def test_failed_first_start_removes_its_temporary_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamer.kafka import local_broker

    made: list[Path] = []
    real_mkdtemp = local_broker.tempfile.mkdtemp

    def recording_mkdtemp(**kwargs: str) -> str:
        path = real_mkdtemp(**kwargs)
        made.append(Path(path))
        return path

    def no_java() -> str:
        raise local_broker.BrokerStartError("no java")

    fake = install_mod.Installation(KAFKA_VERSION, Path("/nonexistent"), 0.0, fresh=False)
    monkeypatch.setattr(local_broker.tempfile, "mkdtemp", recording_mkdtemp)
    monkeypatch.setattr(local_broker, "install", lambda version: fake)
    monkeypatch.setattr(local_broker, "find_java", no_java)
    kafka = local_broker.LocalKafka()
    with pytest.raises(local_broker.BrokerStartError, match="no java"):
        kafka.start()
    assert not kafka.is_running()
    assert len(made) == 1 and not made[0].exists()


class _FakeContainer:
    """Stands in for testcontainers' DockerContainer: records what the fixture asks for."""

    instances: ClassVar[list[_FakeContainer]] = []

    def __init__(self, image: str) -> None:
        self.image = image
        self.env: dict[str, str] = {}
        self.ports: dict[int, int] = {}
        self.started = self.stopped = False
        _FakeContainer.instances.append(self)

    def with_bind_ports(self, container: int, host: int) -> _FakeContainer:
        self.ports[container] = host
        return self

    def with_env(self, key: str, value: str) -> _FakeContainer:
        self.env[key] = value
        return self

    def start(self) -> _FakeContainer:
        self.started = True
        return self

    def stop(self) -> None:
        self.stopped = True


def test_docker_kafka_advertises_the_published_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import testcontainers.core.container as tc

    from tests.fixtures import kafka as fixtures

    _FakeContainer.instances.clear()
    waited: list[str] = []
    monkeypatch.setattr(tc, "DockerContainer", _FakeContainer)
    monkeypatch.setattr(fixtures, "wait_until_ready", lambda b, t: waited.append(b))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    container, bootstrap = fixtures.start_docker_kafka()
    assert isinstance(container, _FakeContainer) and container.started
    assert container.image == f"apache/kafka:{KAFKA_VERSION}"
    host, port = split_bootstrap(bootstrap)[0]
    assert container.ports == {port: port}
    assert container.env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{host}:{port}"
    assert f"PLAINTEXT://0.0.0.0:{port}" in container.env["KAFKA_LISTENERS"]
    assert container.env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert len(container.env["CLUSTER_ID"]) == 22
    assert waited == [bootstrap]


def test_docker_kafka_is_stopped_when_it_never_gets_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import testcontainers.core.container as tc

    from tests.fixtures import kafka as fixtures

    def never_ready(bootstrap: str, timeout_s: float) -> None:
        raise TimeoutError("not ready")

    _FakeContainer.instances.clear()
    monkeypatch.setattr(tc, "DockerContainer", _FakeContainer)
    monkeypatch.setattr(fixtures, "wait_until_ready", never_ready)
    with pytest.raises(TimeoutError):
        fixtures.start_docker_kafka()
    assert _FakeContainer.instances[0].stopped


def test_summarize_errors_keeps_errors_and_causes_once() -> None:
    log = "\n".join(
        [
            "[t] INFO fine (x)",
            "[t] ERROR Unable to start acceptor (y)",
            "\tat some.Frame(File.java:1)",
            "Caused by: java.net.BindException: Address already in use",
            "Caused by: java.net.BindException: Address already in use",
            "[t] WARN meh (z)",
        ]
    )
    assert summarize_errors(log).splitlines() == [
        "[t] ERROR Unable to start acceptor (y)",
        "Caused by: java.net.BindException: Address already in use",
    ]
    assert summarize_errors("[t] INFO all good") == "(none found)"


def test_cds_archive_name_changes_after_a_reinstall(tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_bytes(b"#!")
    before = cds_archive_path(str(java), "4.1.1", home=tmp_path)
    _fake_install(tmp_path, ["kafka_2.13-x.jar"], version="4.1.1")
    assert cds_archive_path(str(java), "4.1.1", home=tmp_path) != before
