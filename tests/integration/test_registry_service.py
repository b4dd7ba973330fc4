"""`streamer run` with a Schema Registry: real broker, real registry (Apicurio), real service.

Upstream records are written by confluent-kafka's producer and its JSONSerializer and
AvroSerializer, results and dead letters are read back with confluent-kafka's JSONDeserializer:
the Confluent wire format is checked by clients nobody here wrote. Plain JSON on the same topic keeps working (migration), a
record with an unknown schema id or a payload its own schema rejects is a dead letter with a
reason, a registry that is down at start stops the service with a clear error, and one that
goes away mid-run holds the new records (readiness false) until it is back: nothing lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamer.kafka.local_broker import free_port
from streamer.kafka.local_registry import LocalRegistry
from streamer.records.registry import frame, split_frame
from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    create_topics,
    query_event,
)

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
QUERY_SCHEMA = (REPO / "schemas" / "query_event.v1.json").read_text()


def _service(bootstrap: str, artifact: Path, topics, tmp_path: Path, url: str) -> ServiceProcess:
    return ServiceProcess(
        bootstrap=bootstrap,
        artifact=artifact,
        topics=topics,
        log_path=tmp_path / "svc.log",
        routes="intent",
        extra_env={
            "STREAMER_SCHEMA_REGISTRY_URL": url,
            "STREAMER_SCHEMA_REGISTRY_TIMEOUT_S": "1",
        },
    )


def _upstream(bootstrap: str, url: str, topic: str, values: list[tuple[str, bytes]]) -> None:
    """Send (key, value) records with confluent-kafka's producer; waits for delivery."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in values:
        producer.produce(topic, value=value, key=key.encode())
    assert producer.flush(30) == 0


def _framed(url: str, topic: str, ids: list[str], schema: str = QUERY_SCHEMA) -> list[bytes]:
    serializer = JSONSerializer(schema, SchemaRegistryClient({"url": url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    out = []
    for i, event_id in enumerate(ids):
        value = serializer(
            {"event_id": event_id, "query": QUERIES[i % len(QUERIES)], "ts_ms": int(time.time() * 1000)},
            ctx,
        )  # fmt: skip
        assert value is not None
        out.append(value)
    return out


def _avro(url: str, topic: str, ids: list[str]) -> list[bytes]:
    """Avro query events as confluent-kafka's AvroSerializer writes them, beside JSON Schema
    ones on the same topic: under the topic-record strategy (<topic>-<record name>), as
    topics carrying several formats do (a subject keeps one schema type in Apicurio)."""
    from confluent_kafka.schema_registry import topic_record_subject_name_strategy
    from confluent_kafka.schema_registry.avro import AvroSerializer

    from tests.integration.test_registry import AVRO_QUERY

    serializer = AvroSerializer(
        SchemaRegistryClient({"url": url}),
        json.dumps(AVRO_QUERY),
        conf={"subject.name.strategy": topic_record_subject_name_strategy},
    )
    ctx = SerializationContext(topic, MessageField.VALUE)
    out = []
    for i, event_id in enumerate(ids):
        value = serializer(
            {"event_id": event_id, "query": QUERIES[i], "locale": None, "ts_ms": None}, ctx
        )
        assert value is not None
        out.append(value)
    return out


async def _read_raw(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[bytes]:
    """Raw values of a topic from the start, until `count` are read or the timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50,
    )  # fmt: skip
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(values) < count:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                values.extend(m.value for m in messages)
    finally:
        await consumer.stop()
    return values


def _not_ready_body(svc: ServiceProcess) -> str:
    """The body of a 503 from /readyz (its reasons); empty when it answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics_port}/readyz", timeout=2):
            return ""
    except urllib.error.HTTPError as err:
        return err.read().decode()


def _decode_all(url: str, topic: str, values: list[bytes]) -> list[dict]:
    """confluent-kafka's JSONDeserializer over our records (it validates them, too)."""
    deserializer = JSONDeserializer(None, schema_registry_client=SchemaRegistryClient({"url": url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [deserializer(v, ctx) for v in values]


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_framed_and_plain_inputs_answered_in_wire_format(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path, schema_registry_url: str,
    delivery: str,
) -> None:  # fmt: skip
    """Both publishers (shared producer, transactional per partition) frame what they write."""
    url = schema_registry_url
    topics = await create_topics(kafka_bootstrap, partitions=2)
    svc = _service(kafka_bootstrap, tiny_cpu_artifact, topics, tmp_path, url)
    svc.extra_env["STREAMER_DELIVERY"] = delivery
    svc.start()
    try:
        framed_ids = [f"f{i}" for i in range(20)]
        framed = _framed(url, topics.queries, framed_ids)
        writer_id = split_frame(framed[0])[0]  # type: ignore[index]
        plain = [(f"p{i}", query_event(f"p{i}", QUERIES[i % len(QUERIES)])) for i in range(10)]
        unknown = frame(2_000_000_000, b'{"event_id": "u1", "query": "x"}')
        violating = frame(writer_id, json.dumps({"event_id": "v1", "query": 3}).encode())
        avro_ids = [f"a{i}" for i in range(5)]
        avro = _avro(url, topics.queries, avro_ids)
        await asyncio.to_thread(
            _upstream, kafka_bootstrap, url, topics.queries,
            [*zip(framed_ids, framed, strict=True), *plain, ("u1", unknown), ("v1", violating),
             *zip(avro_ids, avro, strict=True)],
        )  # fmt: skip
        results = await _read_raw(kafka_bootstrap, topics.intents, 35, 120)
        letters = await _read_raw(kafka_bootstrap, topics.dlq, 2, 30)
        assert svc.http("/readyz")[0] == 200
    finally:
        svc.stop()
    sync = SchemaRegistryClient({"url": url})
    result_id = sync.get_latest_version(f"{topics.intents}-value").schema_id
    dlq_id = sync.get_latest_version(f"{topics.dlq}-value").schema_id
    assert {split_frame(v)[0] for v in results} == {result_id}  # type: ignore[index]
    answered = [r["event_id"] for r in _decode_all(url, topics.intents, results)]
    assert sorted(answered) == sorted(framed_ids + [k for k, _ in plain] + avro_ids)
    assert {split_frame(v)[0] for v in letters} == {dlq_id}  # type: ignore[index]
    by_id = {}
    for letter in _decode_all(url, topics.dlq, letters):
        by_id[base64.b64decode(letter["payload_b64"])] = letter
    assert by_id[unknown]["error_code"] == "UNKNOWN_SCHEMA"
    assert "2000000000" in by_id[unknown]["reason"]
    assert by_id[violating]["error_code"] == "SCHEMA_VIOLATION"
    assert "query" in by_id[violating]["reason"]


async def test_registry_down_at_start_is_a_clear_error(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    topics = await create_topics(kafka_bootstrap, partitions=1)
    svc = _service(kafka_bootstrap, tiny_cpu_artifact, topics, tmp_path, url).launch()
    try:
        code = await asyncio.to_thread(svc.wait, 120)
    finally:
        svc.stop()
    assert code == 3, svc.log_tail()
    assert f"schema registry at {url}" in svc.log_path.read_text()


async def test_registry_outage_mid_run_loses_nothing(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path,
    dedicated_registry: LocalRegistry,
) -> None:  # fmt: skip
    """Records with a schema id first seen during the outage are held (not decoded, not
    committed, /readyz 503) and all answered, once each, when the registry is back."""
    url = dedicated_registry.url
    topics = await create_topics(kafka_bootstrap, partitions=1)
    svc = _service(kafka_bootstrap, tiny_cpu_artifact, topics, tmp_path, url).start()
    try:
        before = _framed(url, topics.queries, ["a0", "a1", "a2"])
        await asyncio.to_thread(
            _upstream, kafka_bootstrap, url, topics.queries,
            list(zip(["a0", "a1", "a2"], before, strict=True)),
        )  # fmt: skip
        assert len(await _read_raw(kafka_bootstrap, topics.intents, 3, 60)) == 3
        # A second version of the writer's schema: registered now, first used in the outage.
        wider = json.loads(QUERY_SCHEMA)
        wider["description"] = "version 2"
        during_ids = [f"b{i}" for i in range(10)]
        during = _framed(url, topics.queries, during_ids, json.dumps(wider))
        assert split_frame(during[0])[0] != split_frame(before[0])[0]  # type: ignore[index]
        dedicated_registry.stop()
        await asyncio.to_thread(
            _upstream, kafka_bootstrap, url, topics.queries,
            list(zip(during_ids, during, strict=True)),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while svc.http("/readyz")[0] == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert svc.http("/readyz")[0] == 503, svc.log_tail()
        assert "schema registry unavailable" in _not_ready_body(svc)
        await asyncio.sleep(2.0)
        assert len(await _read_raw(kafka_bootstrap, topics.intents, 4, 3)) == 3  # held
        assert await _read_raw(kafka_bootstrap, topics.dlq, 1, 1) == []  # not dead-lettered
        await asyncio.to_thread(dedicated_registry.start)
        results = await _read_raw(kafka_bootstrap, topics.intents, 13, 120)
        deadline = time.monotonic() + 30
        while svc.http("/readyz")[0] != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert svc.http("/readyz")[0] == 200
    finally:
        svc.stop()
    answered = [r["event_id"] for r in _decode_all(url, topics.intents, results)]
    assert sorted(answered) == sorted(["a0", "a1", "a2", *during_ids])


async def test_replay_reads_framed_records_and_writes_framed_results(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, schema_registry_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`streamer replay` shares the intake's schema resolution and the framed outputs."""
    from tests.integration.test_replay import _replay, _topics_with_outputs

    url = schema_registry_url
    topics = await _topics_with_outputs(kafka_bootstrap, partitions=1)
    ids = [f"r{i}" for i in range(8)]
    now = int(time.time() * 1000)
    await asyncio.to_thread(
        _upstream, kafka_bootstrap, url, topics.queries,
        list(zip(ids, _framed(url, topics.queries, ids), strict=True)),
    )  # fmt: skip
    monkeypatch.setenv("STREAMER_SCHEMA_REGISTRY_URL", url)
    code, docs, err = await asyncio.to_thread(
        _replay, kafka_bootstrap, topics, tiny_cpu_artifact, "framed",
        "--from", str(now - 60_000), "--to", str(now + 10 * 60_000),
    )  # fmt: skip
    assert code == 0, err
    assert docs[-1]["summary"]["results"] == len(ids)
    out = f"{topics.intents}.replay"
    results = await _read_raw(kafka_bootstrap, out, len(ids), 30)
    result_id = SchemaRegistryClient({"url": url}).get_latest_version(f"{out}-value").schema_id
    assert {split_frame(v)[0] for v in results} == {result_id}  # type: ignore[index]
    assert sorted(r["event_id"] for r in _decode_all(url, out, results)) == sorted(ids)
