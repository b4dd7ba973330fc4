"""The service against a secured broker: SASL_SSL (SCRAM-SHA-512), TLS from a generated CA, ACLs.

One secured local broker for the module (its own ports and work directory; the session's
plaintext broker is untouched). The service's user `streamer` gets ACLs per test on that test's
topics: READ on the input topics and the group, WRITE on the result and DLQ topics. `outsider`
is a user with no topic ACL. Every start-up failure must end with exit code 3, one
`streamer: <reason>` line that says what is wrong, no traceback, and no secret anywhere in the
service's output.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import TopicAuthorizationFailedError

from streamer.kafka.local_broker import FAST_START_JVM_FLAGS, LocalKafka
from streamer.kafka.local_tls import CertificateAuthority
from streamer.records.samples import BAD_RECORDS
from tests.fixtures.kafka import running
from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    Topics,
    collect,
    create_topics,
    pair_event,
    produce,
    query_event,
    read_all,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

GROUP = "streamer-secure"


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[LocalKafka]:
    """A secured broker of this module's own."""
    with running(
        LocalKafka(jvm_flags=FAST_START_JVM_FLAGS, secure=True, users=("streamer", "outsider")),
        "could not start the secured local Kafka",
    ) as kafka:
        yield kafka


def _admin(kafka: LocalKafka) -> dict:
    assert kafka.security is not None
    return kafka.security.client_kwargs()


async def _topics(kafka: LocalKafka, *, dlq_write: bool = True) -> Topics:
    """Fresh topics with the service user's ACLs (WRITE on the DLQ unless dlq_write=False)."""
    assert kafka.security is not None
    topics = await create_topics(kafka.bootstrap_servers, 2, _admin(kafka), prefix="s-")
    await asyncio.to_thread(
        kafka.security.grant,
        "streamer",
        read=[topics.queries, topics.pairs],
        write=[topics.intents, topics.duplicates] + ([topics.dlq] if dlq_write else []),
        describe=[] if dlq_write else [topics.dlq],
        groups=[GROUP],
    )
    return topics


def _service(
    kafka: LocalKafka, artifact: Path, topics: Topics, log: Path, **env: str
) -> ServiceProcess:
    assert kafka.security is not None
    return ServiceProcess(
        bootstrap=kafka.bootstrap_servers,
        artifact=artifact,
        topics=topics,
        log_path=log,
        group_id=GROUP,
        extra_env={**kafka.security.service_env("streamer"), **env},
    )


def _secrets(kafka: LocalKafka) -> list[str]:
    assert kafka.security is not None
    return list(kafka.security.passwords.values())


def _assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, "a secret leaked into the service's output"


def _failed_start(svc: ServiceProcess, timeout_s: float = 180) -> str:
    """Run the service until it exits; returns its whole output (asserting exit code 3)."""
    svc.launch()
    try:
        code = svc.wait(timeout_s)
    finally:
        svc.stop()
    output = svc.log_path.read_text(errors="replace")
    assert code == 3, f"exit {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    return output


def _reason(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("streamer: ")]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


async def test_service_end_to_end_over_sasl_ssl(secure_kafka, tiny_cpu_artifact, tmp_path):
    """Queries, pairs and malformed records through SASL_SSL + ACLs: every id answered, the bad
    ones dead-lettered, SIGTERM drains; the passwords appear nowhere in the output."""
    kafka, admin = secure_kafka, _admin(secure_kafka)
    topics = await _topics(kafka)
    svc = _service(kafka, tiny_cpu_artifact, topics, tmp_path / "svc.log").start()
    try:
        queries = [(f"q{i}".encode(), query_event(f"q{i}", QUERIES[i % len(QUERIES)])) for i in range(300)]  # fmt: skip
        pairs = [(f"p{i}".encode(), pair_event(f"p{i}", i)) for i in range(60)]
        bad = [(None, raw) for _code, _desc, raw in BAD_RECORDS]
        await produce(kafka.bootstrap_servers, topics.queries, queries + bad, client_kwargs=admin)
        await produce(kafka.bootstrap_servers, topics.pairs, pairs, client_kwargs=admin)
        q_ids, p_ids = {k.decode() for k, _ in queries}, {k.decode() for k, _ in pairs}
        q_seen, p_seen = await asyncio.gather(
            collect(kafka.bootstrap_servers, topics.intents, q_ids, 180, client_kwargs=admin),
            collect(kafka.bootstrap_servers, topics.duplicates, p_ids, 180, client_kwargs=admin),
        )
        letters: list[dict] = []
        deadline = time.monotonic() + 60
        while len(letters) < len(bad) and time.monotonic() < deadline:
            letters = await read_all(kafka.bootstrap_servers, topics.dlq, client_kwargs=admin)
        print(
            f"secured: {len(q_seen)}/{len(q_ids)} intents, {len(p_seen)}/{len(p_ids)} pairs, "
            f"{len(letters)}/{len(bad)} dead letters"
        )
        assert q_ids <= q_seen.keys() and p_ids <= p_seen.keys(), svc.log_tail()
        assert len(letters) == len(bad)
        assert svc.http("/readyz")[0] == 200
        metrics = svc.http("/metrics")[1]
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0
    finally:
        svc.stop()
    output = svc.log_path.read_text(errors="replace")
    _assert_no_secret(output + metrics, _secrets(kafka))


async def test_wrong_password_stops_startup(secure_kafka, tiny_cpu_artifact, tmp_path):
    kafka = secure_kafka
    topics = await _topics(kafka)
    wrong = "not-the-password-" + "x" * 12
    svc = _service(kafka, tiny_cpu_artifact, topics, tmp_path / "svc.log", STREAMER_SASL_PASSWORD=wrong)  # fmt: skip
    output = _failed_start(svc)
    reason = _reason(output)
    assert "SASL SCRAM-SHA-512 authentication as user 'streamer' failed" in reason, reason
    _assert_no_secret(output, [*_secrets(kafka), wrong])


async def test_unknown_ca_stops_startup(secure_kafka, tiny_cpu_artifact, tmp_path):
    kafka = secure_kafka
    topics = await _topics(kafka)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(CertificateAuthority("some-other-ca").cert_pem)
    svc = _service(kafka, tiny_cpu_artifact, topics, tmp_path / "svc.log", STREAMER_SSL_CAFILE=str(other_ca))  # fmt: skip
    output = _failed_start(svc)
    reason = _reason(output)
    assert "TLS certificate was rejected" in reason, reason
    assert "is ssl_cafile the CA that signed" in reason, reason
    _assert_no_secret(output, _secrets(kafka))


async def test_expired_broker_certificate_stops_startup(secure_kafka, tiny_cpu_artifact, tmp_path):
    kafka = secure_kafka
    assert kafka.security is not None
    topics = await _topics(kafka)
    svc = _service(kafka, tiny_cpu_artifact, topics, tmp_path / "svc.log")
    svc.bootstrap = kafka.security.expired_bootstrap
    output = _failed_start(svc)
    reason = _reason(output)
    assert "certificate has expired" in reason, reason
    _assert_no_secret(output, _secrets(kafka))


async def test_missing_dlq_write_acl_stops_startup(secure_kafka, tiny_cpu_artifact, tmp_path):
    """The DLQ is needed only at the first bad record: start-up checks WRITE on it up front."""
    kafka = secure_kafka
    topics = await _topics(kafka, dlq_write=False)
    svc = _service(kafka, tiny_cpu_artifact, topics, tmp_path / "svc.log")
    output = _failed_start(svc)
    reason = _reason(output)
    assert f"not authorized to WRITE topic {topics.dlq}" in reason, reason
    assert "intents" not in reason.split("(")[0], reason  # only the DLQ is named
    _assert_no_secret(output, _secrets(kafka))


async def test_user_without_read_acl_cannot_consume_results(secure_kafka):
    """`outsider` (no ACL on the topic) is refused; the admin reads the same topic (control)."""
    kafka = secure_kafka
    assert kafka.security is not None
    topics = await _topics(kafka)
    admin = _admin(kafka)
    await produce(kafka.bootstrap_servers, topics.intents, [(b"k", b"{}")], client_kwargs=admin)
    assert len(await read_all(kafka.bootstrap_servers, topics.intents, client_kwargs=admin)) == 1
    consumer = AIOKafkaConsumer(
        topics.intents, bootstrap_servers=kafka.bootstrap_servers, group_id=None,
        auto_offset_reset="earliest", **kafka.security.client_kwargs("outsider"),
    )  # fmt: skip
    try:
        # Refused when it subscribes (metadata) or, at the latest, when it fetches.
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if await consumer.getmany(timeout_ms=500):
                    pytest.fail("outsider read records from a result topic")
    finally:
        await consumer.stop()


async def test_missing_group_read_acl_stops_startup(secure_kafka, tiny_cpu_artifact, tmp_path):
    """Without READ on its group the consumer never joins (it would sit idle, fetch errors in
    its log): start-up says so instead."""
    kafka = secure_kafka
    topics = await _topics(kafka)
    svc = _service(kafka, tiny_cpu_artifact, topics, tmp_path / "svc.log")
    svc.group_id = "streamer-no-acl"
    output = _failed_start(svc)
    reason = _reason(output)
    assert "not authorized to READ consumer group streamer-no-acl" in reason, reason
    _assert_no_secret(output, _secrets(kafka))
