"""Schema Registry wire format: framing, sniffing, subject names, validators, settings.

The framing is pure (no registry needed): these pin the byte layout Confluent's serializers
write (magic byte 0, 4-byte big-endian id), that plain JSON is never taken for a frame, and
that a malformed frame is a decode error, not a crash. The client side runs against a real
registry in tests/integration/test_registry.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from confluent_kafka.schema_registry import Schema
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streamer.config import Settings
from streamer.errors import DecodeError, ErrorCode
from streamer.records import registry
from streamer.records.registry import (
    HEADER_BYTES,
    SCHEMA_FILES,
    SubjectStrategy,
    frame,
    framed_ids,
    split_frame,
    subject_name,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=10,
)


@given(st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_frame_round_trip(schema_id: int, payload: bytes) -> None:
    raw = frame(schema_id, payload)
    assert raw[0] == 0 and len(raw) == HEADER_BYTES + len(payload)
    assert int.from_bytes(raw[1:5], "big") == schema_id
    assert split_frame(raw) == (schema_id, payload)
    assert framed_ids([raw, None, b"{}"]) == {schema_id}


def test_frame_matches_confluent_layout() -> None:
    # What confluent-kafka's JSONSerializer wrote for schema id 1 (tests/integration prove it
    # live): b"\x00" + id (big-endian, 4 bytes) + the JSON text.
    assert frame(1, b'{"a":1}') == b'\x00\x00\x00\x00\x01{"a":1}'


@given(json_values)
def test_plain_json_is_never_taken_for_a_frame(value: object) -> None:
    raw = orjson.dumps(value)
    assert split_frame(raw) is None
    assert framed_ids([raw]) == set()
    assert split_frame(b" \t\n" + raw) is None
    assert split_frame(b"\xef\xbb\xbf" + raw) is None  # a UTF-8 BOM


@pytest.mark.parametrize("raw", [b"\x00", b"\x00\x00\x00\x01"])
def test_short_frame_is_a_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        split_frame(raw)
    assert info.value.code is ErrorCode.NOT_JSON
    assert framed_ids([raw]) == set()


def test_frame_rejects_ids_outside_four_bytes() -> None:
    with pytest.raises(ValueError):
        frame(2**32, b"")
    with pytest.raises(ValueError):
        frame(-1, b"")


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("topic", "search.query-intents.v1-value"),
        ("record", "search.query-intent.v1"),
        ("topic_record", "search.query-intents.v1-search.query-intent.v1"),
    ],
)
def test_subject_names_follow_confluent_strategies(strategy: str, expected: str) -> None:
    assert subject_name(strategy, "search.query-intents.v1", "search.query-intent.v1") == expected
    assert SubjectStrategy(strategy).value == strategy


def test_our_schema_files_are_json_schemas_the_registry_validator_accepts() -> None:
    for record, name in SCHEMA_FILES.items():
        text = (SCHEMAS / name).read_text()
        assert json.loads(text)["properties"]["schema"]["const"] == record
        known = registry._validator_for(Schema(text, "JSON"), 1)
        assert known.rejection is None and known.validator is not None


def test_unsupported_or_broken_schemas_are_rejections_not_readers() -> None:
    avro = registry._validator_for(
        Schema('{"type": "record", "name": "Q", "fields": []}', "AVRO"), 9
    )
    assert avro.avro is not None and avro.rejection is None
    proto = registry._validator_for(Schema('syntax = "proto3"; message Q {}', "PROTOBUF"), 8)
    assert proto.validator is None and proto.avro is None and "PROTOBUF" in (proto.rejection or "")
    broken = registry._validator_for(Schema('{"type": 12}', "JSON"), 10)
    assert broken.validator is None and "not a valid JSON Schema" in (broken.rejection or "")
    bad_avro = registry._validator_for(Schema('{"type": "recrd"}', "AVRO"), 11)
    assert bad_avro.avro is None and "not a valid Avro schema" in (bad_avro.rejection or "")


def test_avro_nulls_become_absent_fields() -> None:
    datum = {"a": None, "b": {"c": None, "d": 1}, "e": [{"f": None}]}
    assert registry._without_nulls(datum) == {"b": {"d": 1}, "e": [{}]}


def test_settings_block() -> None:
    assert Settings().schema_registry_url is None
    ok = Settings(
        schema_registry_url="https://a:8081,https://b:8081",
        schema_registry_username="u",
        schema_registry_password="p",
        schema_registry_subject_strategy="topic_record",
    )
    assert "p" in ok.secrets()
    with pytest.raises(ValidationError, match="http"):
        Settings(schema_registry_url="registry:8081")
    with pytest.raises(ValidationError, match="username"):
        Settings(schema_registry_url="http://r", schema_registry_password="p")
    with pytest.raises(ValidationError):
        Settings(schema_registry_subject_strategy="subject")
    with pytest.raises(ValidationError, match="dead_letter"):
        Settings(schema_registry_schemas_dir=SCHEMAS.parent)
    assert Settings(schema_registry_schemas_dir=SCHEMAS).schema_registry_schemas_dir == SCHEMAS


def test_client_config_carries_auth_and_ca(tmp_path: Path) -> None:
    conf = registry.make_client_config(
        "https://r", username="u", password="p", ca_file=tmp_path / "ca.pem", timeout_s=2
    )
    assert conf["basic.auth.user.info"] == "u:p"
    assert conf["ssl.ca.location"].endswith("ca.pem")
    assert conf["timeout"] == 2
    assert "basic.auth.user.info" not in registry.make_client_config("http://r")


async def test_build_registry_registers_the_enabled_routes_and_the_dlq() -> None:
    from streamer.app import build_registry

    assert build_registry(Settings()) is None
    reg = build_registry(
        Settings(schema_registry_url="http://127.0.0.1:1", routes="intent", topic_dlq="d")
    )
    assert reg is not None
    try:
        assert reg._outputs == {"search.query-intents.v1": "search.query-intent.v1",
                                "d": "search.streamer.dead-letter.v1"}  # fmt: skip
        assert reg.strategy is SubjectStrategy.TOPIC
        assert (reg._schemas_dir / "dead_letter.v1.json").is_file()
    finally:
        await reg.close()


def _draft07(name: str) -> dict:
    document = json.loads((SCHEMAS / name).read_text())
    document["$schema"] = "http://json-schema.org/draft-07/schema#"
    return document


QUERY_07 = registry._validator_for(Schema(json.dumps(_draft07("query_event.v1.json")), "JSON"), 3)
query_like = st.fixed_dictionaries(
    {"event_id": st.one_of(st.text(max_size=3), st.integers(), st.none())},
    optional={
        "query": st.one_of(st.text(max_size=5), st.integers(), st.booleans()),
        "ts_ms": st.one_of(st.integers(-5, 2**53), st.floats(allow_nan=False), st.text(max_size=2)),
        "locale": st.one_of(st.text(max_size=3), st.none()),
        "extra": json_values,
    },
)


@given(query_like)
def test_compiled_draft7_check_agrees_with_jsonschema(document: dict) -> None:
    """The fast path (fastjsonschema, drafts 4-7) accepts exactly what jsonschema accepts."""
    assert QUERY_07.fast is not None
    assert registry._passes(QUERY_07.fast, document) == QUERY_07.validator.is_valid(document)


def test_only_drafts_4_to_7_get_the_compiled_check() -> None:
    latest = registry._validator_for(
        Schema((SCHEMAS / "query_event.v1.json").read_text(), "JSON"), 4
    )
    assert latest.fast is None and latest.validator is not None  # 2020-12: complete validator
    unnamed = {k: v for k, v in _draft07("query_event.v1.json").items() if k != "$schema"}
    assert registry._validator_for(Schema(json.dumps(unnamed), "JSON"), 5).fast is None


def test_urls_in_messages_never_carry_credentials() -> None:
    assert (
        registry.redacted_url("https://u:secret@r1:8081/apis, http://r2/x")
        == "https://r1:8081/apis,http://r2/x"
    )


def test_only_the_registrys_not_found_answer_dead_letters() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryError

    assert registry._not_found(SchemaRegistryError(404, 40403, "Schema not found"))
    assert not registry._not_found(SchemaRegistryError(404, -1, "<html>proxy</html>"))
    assert not registry._not_found(SchemaRegistryError(503, -1, "unavailable"))
