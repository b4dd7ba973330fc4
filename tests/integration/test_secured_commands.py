"""Every command against a secured broker (SASL_SSL, SCRAM-SHA-512, a generated CA, ACLs).

`streamer topics`, `produce`, `tail` and `replay` run as `python -m streamer` subprocesses with
nothing but the `STREAMER_*` settings the service itself takes (what `make kafka-up SECURE=1`
prints to source): they must connect, as the users the ACLs name. Without those settings each
must stop with one line saying the broker speaks TLS, not a traceback or aiokafka's bare
"Unable to bootstrap". The bench's external-cluster path is exercised through the functions
`streamer bench` runs (admin, load generator, sink, contender processes): a whole benchmark
ramp takes minutes, and what it adds on top is measurement, not connections.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.bench.harness import (
    BenchConfig,
    PathPlan,
    Topics,
    cluster_client_kwargs,
    contender_command,
    run_contender_path,
)
from streamer.kafka.local_broker import FAST_START_JVM_FLAGS, LocalKafka
from streamer.kafka.security import security_env_names
from tests.fixtures.kafka import running
from tests.integration.pipeline_harness import REPO

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

TLS_HINT = "speaks TLS but security_protocol is PLAINTEXT"
RECORD_LINE = re.compile(r"^\d+:\d+ ", re.MULTILINE)  # `streamer tail`: partition:offset first


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[LocalKafka]:
    """A secured broker of this module's own (users: admin, a super user; streamer)."""
    with running(
        LocalKafka(jvm_flags=FAST_START_JVM_FLAGS, secure=True, users=("streamer",)),
        "could not start the secured local Kafka",
    ) as kafka:
        yield kafka


def _env(kafka: LocalKafka, user: str | None, **extra: str) -> dict[str, str]:
    """This process's environment with only the broker's address, plus `user`'s security
    settings when given (the service's STREAMER_* variables, as `make kafka-up SECURE=1`)."""
    assert kafka.security is not None
    env = {k: v for k, v in os.environ.items() if k not in security_env_names()}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.update(
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        STREAMER_VARIANT="fp32",
        STREAMER_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        COLUMNS="400",  # rich wraps `streamer tail` lines at 80 columns without a terminal
    )
    if user is not None:
        env.update(kafka.security.service_env(user))
    env.update(extra)
    return env


def _streamer(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *argv], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        "STREAMER_TOPIC_QUERIES": f"c-queries-{suffix}",
        "STREAMER_TOPIC_PAIRS": f"c-pairs-{suffix}",
        "STREAMER_TOPIC_INTENTS": f"c-intents-{suffix}",
        "STREAMER_TOPIC_DUPLICATES": f"c-dups-{suffix}",
        "STREAMER_TOPIC_DLQ": f"c-dlq-{suffix}",
    }


def test_every_command_connects_with_the_services_settings(
    secure_kafka: LocalKafka, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    """topics create (admin), then as the ACL-bound service user: topics describe, topics
    create (all exist), produce 40 queries, tail them, replay 10 of them through the model;
    the admin tails the 10 results."""
    kafka = secure_kafka
    assert kafka.security is not None
    names = _names()
    queries, intents = names["STREAMER_TOPIC_QUERIES"], names["STREAMER_TOPIC_INTENTS"]
    replay_id = f"sec-{uuid.uuid4().hex[:6]}"

    done = _streamer(_env(kafka, "admin", **names), "topics", "create", "--partitions", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created  ") == 5, done.stdout
    kafka.security.grant(
        "streamer",
        read=[queries, names["STREAMER_TOPIC_PAIRS"]],
        write=[queries, intents, names["STREAMER_TOPIC_DUPLICATES"], names["STREAMER_TOPIC_DLQ"]],
        groups=["streamer", f"streamer-replay-{replay_id}"],
    )
    env = _env(kafka, "streamer", **names)

    done = _streamer(env, "topics", "describe")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("partitions=1 replication=1") == 5, done.stdout

    # Issue 19's case: `topics create` as the service's user (no CREATE right) on existing
    # topics, the CA given by a --config file instead of STREAMER_SSL_CAFILE.
    config = tmp_path / "streamer.toml"
    config.write_text(f'ssl_cafile = "{kafka.security.ca_file}"\n')
    without_ca = {k: v for k, v in env.items() if k != "STREAMER_SSL_CAFILE"}
    done = _streamer(without_ca, "topics", "create", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("exists   ") == 5, done.stdout

    done = _streamer(env, "produce", "--topic", queries, "--kind", "query", "--rate", "40", "--duration", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    assert sent["acked"] == 40 and sent["failed"] == 0, sent

    done = _streamer(env, "tail", "--topic", queries, "--from-beginning", "--max", "40", timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(RECORD_LINE.findall(done.stdout)) == 40, done.stdout[-2000:]

    done = _streamer(
        env, "replay", "--replay-id", replay_id, "--routes", "intent", "--json", "--nice", "0",
        "--artifact", str(tiny_cpu_artifact), "--from-offsets", f"{queries}:0=0",
        "--to-offsets", f"{queries}:0=10", timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])["summary"]
    assert summary["records_read"] == 10 == summary["results"], summary

    # The service's user only WRITEs results: a downstream principal (here the admin) reads them.
    admin = _env(kafka, "admin", **names)
    done = _streamer(
        admin, "tail", "--topic", intents, "--from-beginning", "--max", "10", timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert len(RECORD_LINE.findall(done.stdout)) == 10, done.stdout[-2000:]
    secrets = list(kafka.security.passwords.values())
    assert not any(secret in done.stdout + done.stderr for secret in secrets)


def test_without_the_security_settings_every_command_says_why(
    secure_kafka: LocalKafka, tiny_cpu_artifact: Path
) -> None:
    """Only the address: each command exits non-zero with one line naming the cause (the
    listener speaks TLS), no traceback. A wrong password is named as such."""
    kafka = secure_kafka
    assert kafka.security is not None
    names = _names()
    topic = names["STREAMER_TOPIC_QUERIES"]
    plain = _env(kafka, None, **names)
    commands = {
        "topics create": ["topics", "create"],
        "topics describe": ["topics", "describe"],
        "produce": ["produce", "--topic", topic, "--rate", "1", "--duration", "1"],
        "tail": ["tail", "--topic", topic, "--max", "1"],
        "replay": ["replay", "--replay-id", "plain", "--routes", "intent", "--dry-run",
                   "--artifact", str(tiny_cpu_artifact)],
    }  # fmt: skip
    for what, argv in commands.items():
        done = _streamer(plain, *argv, timeout=90)
        assert done.returncode != 0, f"{what} connected without TLS:\n{done.stdout}"
        assert TLS_HINT in done.stderr, f"{what}:\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"{what}:\n{done.stderr[-3000:]}"

    wrong = "not-the-password-" + uuid.uuid4().hex
    done = _streamer(
        _env(kafka, "streamer", STREAMER_SASL_PASSWORD=wrong, **names), "topics", "describe"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SASL SCRAM-SHA-512 authentication as user 'streamer' failed" in done.stderr
    assert wrong not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("contender", ["passthrough", "peer"])
async def test_the_bench_reaches_an_external_secured_cluster(
    contender: str, secure_kafka: LocalKafka, tiny_cpu_artifact: Path, tmp_path: Path, monkeypatch
) -> None:
    """What `streamer bench --bootstrap` runs per contender, with the shell's STREAMER_*
    security (an admin: the bench creates and deletes topics): its admin, the contender
    process (aiokafka, or faust for the peer), the load generator and the sink, one short
    step in which every event is answered. The local broker's contenders get none of it."""
    if contender == "peer":
        pytest.importorskip("faust", reason="faust-streaming (the peer) is not installed")
    kafka = secure_kafka
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    for key, value in _env(kafka, "admin").items():
        monkeypatch.setenv(key, value)
    local = BenchConfig.preset("quick", tiny_cpu_artifact, tmp_path)
    assert cluster_client_kwargs(local) == {}  # the bench's own broker is plaintext
    topics = Topics.fresh("x", contender, "intent")
    _, env, _ = contender_command(contender, local, "127.0.0.1:9", "intent", topics, "g")
    assert not set(security_env_names()) & set(env)

    cfg = BenchConfig.preset("quick", tiny_cpu_artifact, tmp_path, step_s=2.0, warmup_s=1.0,
                             force_artifact=True, bootstrap=kafka.bootstrap_servers)  # fmt: skip
    cfg.plans["intent"] = PathPlan((60_000.0,), 10.0, 2.0, 1, 30.0)  # plumbing, not speed
    kwargs = cluster_client_kwargs(cfg)
    assert kwargs["security_protocol"] == "SASL_SSL"
    run = await run_contender_path(
        cfg, uuid.uuid4().hex[:6], kafka.bootstrap_servers, None, contender, "intent", tmp_path,
        print, client_kwargs=kwargs,
    )  # fmt: skip
    assert run["status"] == "ok", run.get("reason")
    (step,) = run["steps"]
    assert step["load"]["scheduled"] == 20 and step["load"]["failed"] == 0
    assert step["sink"]["unique"] == 20 and step["sink"]["missing"] == 0
