"""`SchemaRegistry` against a real registry (Apicurio, Confluent-compatible API), no Kafka.

Records are framed by confluent-kafka's own JSONSerializer (a client nobody here wrote), so
these tests pin interoperability, not just our reading of the format: registration under each
subject strategy, id resolution and caching, validation against the writer's registered schema,
dead-letter codes for unknown ids and non-JSON schemas, and what an outage does.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamer.errors import DecodeError, ErrorCode
from streamer.kafka.local_broker import free_port
from streamer.kafka.local_registry import LocalRegistry
from streamer.records import codec
from streamer.records.registry import (
    RegistryUnavailableError,
    SchemaRegistry,
    frame,
    make_client_config,
    split_frame,
)
from streamer.records.types import DEAD_LETTER_SCHEMA, INTENT_RESULT_SCHEMA

pytestmark = [pytest.mark.registry]

REPO = Path(__file__).resolve().parents[2]
QUERY_SCHEMA = (REPO / "schemas" / "query_event.v1.json").read_text()


def _registry(url: str, strategy: str = "topic", suffix: str | None = None) -> SchemaRegistry:
    suffix = suffix or uuid.uuid4().hex[:8]
    return SchemaRegistry(
        AsyncSchemaRegistryClient(make_client_config(url, timeout_s=2.0)),
        url=url,
        strategy=strategy,
        result_topics={f"intents-{suffix}": INTENT_RESULT_SCHEMA},
        dlq_topic=f"dlq-{suffix}",
        schemas_dir=REPO / "schemas",
        backoff_s=(0.05, 0.2),
    )


def _serialize(url: str, topic: str, value: dict, schema: str = QUERY_SCHEMA) -> bytes:
    """A record value as an upstream service writes it: confluent-kafka's JSONSerializer."""
    serializer = JSONSerializer(schema, SchemaRegistryClient({"url": url}))
    out = serializer(value, SerializationContext(topic, MessageField.VALUE))
    assert out is not None
    return out


@pytest.mark.parametrize("strategy", ["topic", "record", "topic_record"])
async def test_start_registers_our_schemas_under_the_strategy(
    schema_registry_url: str, strategy: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    reg = _registry(schema_registry_url, strategy, suffix)
    try:
        ids = await reg.start()
        again = await _registry(schema_registry_url, strategy, suffix).start()
    finally:
        await reg.close()
    assert ids == again  # idempotent: a restarted instance frames with the same ids
    sync = SchemaRegistryClient({"url": schema_registry_url})
    expected = {
        "topic": {f"intents-{suffix}": f"intents-{suffix}-value", f"dlq-{suffix}": f"dlq-{suffix}-value"},
        "record": {f"intents-{suffix}": INTENT_RESULT_SCHEMA, f"dlq-{suffix}": DEAD_LETTER_SCHEMA},
        "topic_record": {
            f"intents-{suffix}": f"intents-{suffix}-{INTENT_RESULT_SCHEMA}",
            f"dlq-{suffix}": f"dlq-{suffix}-{DEAD_LETTER_SCHEMA}",
        },
    }[strategy]  # fmt: skip
    for topic, subject in expected.items():
        latest = sync.get_latest_version(subject)
        assert latest.schema_id == ids[topic]
        assert latest.schema.schema_type == "JSON"


async def test_our_framed_result_decodes_with_confluents_deserializer(
    schema_registry_url: str,
) -> None:
    reg = _registry(schema_registry_url)
    try:
        ids = await reg.start()
        topic = next(t for t in ids if t.startswith("intents-"))
        value = codec.encode_intent_result(
            codec.decode_intent_result(
                b'{"schema":"search.query-intent.v1","event_id":"e","intent":"product_search",'
                b'"confidence":0.5,"scores":{"product_search":0.5},"model":"m",'
                b'"model_version":"1","source_ts_ms":1,"processed_ts_ms":2,"truncated":false}'
            )
        )
        framed = reg.frame_for(topic, value)
    finally:
        await reg.close()
    assert split_frame(framed) == (ids[topic], value)
    deserializer = JSONDeserializer(None, schema_registry_client=SchemaRegistryClient(
        {"url": schema_registry_url}
    ))  # fmt: skip
    decoded = deserializer(framed, SerializationContext(topic, MessageField.VALUE))
    assert decoded["event_id"] == "e" and decoded["schema"] == INTENT_RESULT_SCHEMA


async def test_framed_records_validate_against_the_writers_schema(
    schema_registry_url: str,
) -> None:
    topic = f"queries-{uuid.uuid4().hex[:8]}"
    good = _serialize(schema_registry_url, topic, {"event_id": "q1", "query": "usb cable"})
    schema_id = split_frame(good)[0]  # type: ignore[index]
    # The writer's serializer refuses invalid values, so a bad one is framed by hand.
    bad = frame(schema_id, json.dumps({"event_id": "q2", "query": 3}).encode())
    unknown = frame(987_654, b'{"event_id": "q3", "query": "x"}')
    proto = SchemaRegistryClient({"url": schema_registry_url}).register_schema(
        f"proto-{topic}-value",
        Schema('syntax = "proto3";\nmessage Q {\n  string event_id = 1;\n}\n', "PROTOBUF"),
    )
    reg = _registry(schema_registry_url)
    try:
        await reg.prepare([good, bad, unknown, frame(proto, b"\x00"), b'{"plain": 1}', None])
    finally:
        await reg.close()
    event = codec.decode_query(reg.unwrap(good))
    assert (event.event_id, event.query) == ("q1", "usb cable")
    assert reg.unwrap(b'{"plain": 1}') == b'{"plain": 1}'  # plain JSON passes through
    failures = {}
    for name, raw in {"bad": bad, "unknown": unknown, "proto": frame(proto, b"\x00")}.items():
        with pytest.raises(DecodeError) as info:
            reg.unwrap(raw)
        failures[name] = info.value
    assert failures["bad"].code is ErrorCode.SCHEMA_VIOLATION
    # The path and the keyword that failed, never the value (dead letters are read by people).
    assert failures["bad"].reason == (
        f"does not match registered schema id {schema_id}: at $.query 'type' fails"
    )
    assert failures["unknown"].code is ErrorCode.UNKNOWN_SCHEMA
    assert "987654" in failures["unknown"].reason
    assert failures["proto"].code is ErrorCode.UNKNOWN_SCHEMA
    assert "PROTOBUF" in failures["proto"].reason


AVRO_QUERY = {
    "type": "record", "name": "QueryEvent", "namespace": "search",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "query", "type": "string"},
        {"name": "locale", "type": ["null", "string"], "default": None},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ],
}  # fmt: skip


async def test_avro_records_decode_with_the_writers_schema(schema_registry_url: str) -> None:
    """Avro written by confluent-kafka's AvroSerializer reads as the same event; an Avro null
    is an absent field; a payload that is not Avro of its schema is a SCHEMA_VIOLATION."""
    topic = f"queries-{uuid.uuid4().hex[:8]}"
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": schema_registry_url}), json.dumps(AVRO_QUERY)
    )
    ctx = SerializationContext(topic, MessageField.VALUE)
    full = serializer({"event_id": "a1", "query": "usb cable", "locale": "en-US", "ts_ms": 5}, ctx)
    sparse = serializer({"event_id": "a2", "query": "hdmi", "locale": None, "ts_ms": None}, ctx)
    assert full is not None and sparse is not None
    schema_id = split_frame(full)[0]  # type: ignore[index]
    truncated = full[:-3]
    reg = _registry(schema_registry_url)
    try:
        await reg.prepare([full, sparse, truncated])
    finally:
        await reg.close()
    event = codec.decode_query(reg.unwrap(full))
    assert (event.event_id, event.query, event.locale, event.ts_ms) == (
        "a1",
        "usb cable",
        "en-US",
        5,
    )
    event = codec.decode_query(reg.unwrap(sparse))
    assert (event.event_id, event.locale, event.ts_ms) == ("a2", None, None)
    with pytest.raises(DecodeError) as info:
        reg.unwrap(truncated)
    assert info.value.code is ErrorCode.SCHEMA_VIOLATION
    assert f"schema id {schema_id}" in info.value.reason


async def test_start_with_the_registry_down_says_where_and_what() -> None:
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    reg = _registry(url)
    try:
        with pytest.raises(RegistryUnavailableError) as info:
            await reg.start()
    finally:
        await reg.close()
    assert url in str(info.value) and "registering subject" in str(info.value)


async def test_outage_holds_new_ids_until_the_registry_is_back(
    dedicated_registry: LocalRegistry,
) -> None:
    """Cached ids keep decoding while the registry is away; a new id waits (unavailable, no
    decision), and resolves once the same registry (same port, same storage) is back."""
    url = dedicated_registry.url
    topic = f"queries-{uuid.uuid4().hex[:8]}"
    first = _serialize(url, topic, {"event_id": "a", "query": "before"})
    wider = json.loads(QUERY_SCHEMA)
    wider["description"] = "a second version of the writer's schema"
    second = _serialize(url, topic, {"event_id": "b", "query": "during"}, json.dumps(wider))
    assert split_frame(first)[0] != split_frame(second)[0]  # type: ignore[index]
    reg = _registry(url)
    stopping = asyncio.Event()
    try:
        await reg.start()
        await reg.prepare([first])
        dedicated_registry.stop()
        assert codec.decode_query(reg.unwrap(first)).query == "before"  # cached: no request
        with pytest.raises(RegistryUnavailableError):
            await reg.prepare([second])
        waiting = asyncio.create_task(reg.prepare_until_ready([second], stopping))
        await asyncio.sleep(1.0)
        assert not waiting.done() and not reg.available and reg.outages == 1
        await asyncio.to_thread(dedicated_registry.start)
        assert await asyncio.wait_for(waiting, timeout=30) is True
        assert reg.available
        assert codec.decode_query(reg.unwrap(second)).query == "during"
        # Stopping while the registry is away ends the wait without a decision.
        dedicated_registry.stop()
        third = frame(split_frame(second)[0] + 1000, b"{}")  # type: ignore[index]
        waiting = asyncio.create_task(reg.prepare_until_ready([third], stopping))
        await asyncio.sleep(0.5)
        stopping.set()
        assert await asyncio.wait_for(waiting, timeout=10) is False
    finally:
        await reg.close()
