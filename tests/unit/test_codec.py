"""Codec behaviour: every bad-input class, truncation, round trips, fuzzing, result encoding."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streamer.errors import DecodeError, EncodeError, ErrorCode
from streamer.records import codec
from streamer.records.samples import (
    BAD_PAIR_RECORDS,
    BAD_QUERY_RECORDS,
    BAD_RECORDS,
    good_pair,
    good_query,
)
from streamer.records.types import (
    DLQ_MAX_PAYLOAD_BYTES,
    MAX_RECORD_BYTES,
    DeadLetter,
    DuplicateResult,
    IntentResult,
    Product,
    ProductPairEvent,
    QueryEvent,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validator(name: str) -> Draft202012Validator:
    """A validator for schemas/<name>.v1.json."""
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.v1.json").read_text()))


def code_of(decode: Callable[[bytes], Any], raw: Any) -> ErrorCode | None:
    """The error code decode raises for raw, or None when it accepts it."""
    try:
        decode(raw)
    except DecodeError as err:
        return err.code
    return None


# --- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "desc", "raw"), BAD_QUERY_RECORDS, ids=lambda v: str(v)[:40])
def test_bad_query_records_get_their_code(code: ErrorCode, desc: str, raw: bytes) -> None:
    assert code_of(codec.decode_query, raw) is code, desc


@pytest.mark.parametrize(("code", "desc", "raw"), BAD_PAIR_RECORDS, ids=lambda v: str(v)[:40])
def test_bad_pair_records_get_their_code(code: ErrorCode, desc: str, raw: bytes) -> None:
    assert code_of(codec.decode_pair, raw) is code, desc


def test_samples_cover_every_decode_error_code() -> None:
    # Decided outside the codec: by inference, by the intake (a null value, a batch it cannot
    # read) and by the Schema Registry framing (streamer/records/registry.py).
    outside = {ErrorCode.MODEL_ERROR, ErrorCode.TOMBSTONE, ErrorCode.UNREADABLE_BATCH}
    outside |= {c for c in ErrorCode if c.value in ("SCHEMA_VIOLATION", "UNKNOWN_SCHEMA")}
    decode_codes = set(ErrorCode) - outside
    assert {c for c, _, _ in BAD_RECORDS} == decode_codes
    assert {c for c, _, _ in BAD_QUERY_RECORDS} == decode_codes
    assert {c for c, _, _ in BAD_PAIR_RECORDS} == decode_codes


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"query": "x"}', "event_id"),
        (b'{"event_id": "e", "query": 3}', "query"),
        (b'{"event_id": "e", "query": "x", "ts_ms": "1"}', "ts_ms"),
        (b'{"event_id": "e", "query": "x", "locale": false}', "locale"),
    ],
)
def test_reason_names_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode_query(raw)
    assert info.value.field == field
    assert f"'{field}'" in info.value.reason
    assert f"'{field}'" in str(info.value)


def test_reason_does_not_echo_the_value() -> None:
    secret = "s3cr3t-" * 40
    with pytest.raises(DecodeError) as info:
        codec.decode_query(orjson.dumps({"event_id": secret, "query": "x"}))
    assert "s3cr3t" not in info.value.reason


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, ErrorCode.NOT_JSON),
        ("{}", ErrorCode.NOT_JSON),
        (42, ErrorCode.NOT_JSON),
        (bytearray(b"{}"), ErrorCode.MISSING_FIELD),
        (memoryview(b'{"event_id": "e", "query": " "}'), ErrorCode.EMPTY_TEXT),
    ],
)
def test_non_bytes_inputs_raise_only_decode_error(raw: Any, code: ErrorCode) -> None:
    assert code_of(codec.decode_query, raw) is code


def test_memoryview_and_bytearray_decode() -> None:
    raw = good_query("q-1", "red shoes")
    assert codec.decode_query(memoryview(raw)) == codec.decode_query(bytearray(raw))


def test_record_size_cap_is_a_parameter() -> None:
    raw = good_query("q-1", "red shoes")
    assert code_of(lambda r: codec.decode_query(r, max_record_bytes=len(raw)), raw) is None
    too_small = len(raw) - 1
    got = code_of(lambda r: codec.decode_query(r, max_record_bytes=too_small), raw)
    assert got is ErrorCode.RECORD_TOO_LARGE


def test_record_at_the_cap_is_accepted() -> None:
    head = b'{"event_id": "big", "query": "'
    raw = head + b"a" * (MAX_RECORD_BYTES - len(head) - 2) + b'"}'
    assert len(raw) == MAX_RECORD_BYTES
    assert codec.decode_query(raw).truncated


def test_decode_error_pickles() -> None:
    err = DecodeError(ErrorCode.WRONG_TYPE, "field 'query' must be a string", "query")
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.reason, back.field) == (err.code, err.reason, err.field)


def test_float_with_zero_fraction_counts_as_integer() -> None:
    event = codec.decode_query(b'{"event_id": "e", "query": "x", "ts_ms": 1700000000000.0}')
    assert event.ts_ms == 1_700_000_000_000
    assert type(event.ts_ms) is int


def test_booleans_are_not_numbers() -> None:
    assert code_of(codec.decode_query, b'{"event_id":"e","query":"x","ts_ms":true}') is (
        ErrorCode.WRONG_TYPE
    )
    pair = {"event_id": "p", "left": {"id": "A", "title": "t", "price": True}, "right": {}}
    assert code_of(codec.decode_pair, orjson.dumps(pair)) is ErrorCode.WRONG_TYPE


def test_unknown_fields_are_ignored() -> None:
    raw = orjson.dumps({"event_id": "e", "query": "x", "experiment": {"arm": 2}, "v": [1]})
    assert codec.decode_query(raw) == QueryEvent("e", "x")


def test_nulls_mean_absent_for_optional_fields() -> None:
    raw = orjson.dumps({"event_id": "e", "query": "x", "ts_ms": None, "locale": None})
    assert codec.decode_query(raw) == QueryEvent("e", "x")


def test_product_id_rejects_trailing_newline() -> None:
    pair = {
        "event_id": "p",
        "left": {"id": "B01\n", "title": "t"},
        "right": {"id": "B", "title": "t"},
    }
    assert code_of(codec.decode_pair, orjson.dumps(pair)) is ErrorCode.INVALID_VALUE


# --- truncation -----------------------------------------------------------------------------


def test_query_is_stripped_then_truncated() -> None:
    exact = codec.decode_query(good_query("q", "  " + "a" * 10 + "  "), max_query_chars=10)
    assert (exact.query, exact.truncated) == ("a" * 10, False)
    long = codec.decode_query(good_query("q", "ab cdefgh"), max_query_chars=3)
    # the cut ends on a space, which is dropped: the model never sees trailing whitespace
    assert (long.query, long.truncated) == ("ab", True)


def test_default_query_limit() -> None:
    event = codec.decode_query(good_query("q", "x" * 10_000))
    assert event.truncated
    assert len(event.query) == codec.DEFAULT_MAX_QUERY_CHARS


def test_pair_truncation_flags_any_field() -> None:
    plain = codec.decode_pair(good_pair("p", "left", "right", description="d" * 20))
    assert not plain.truncated
    by_desc = codec.decode_pair(
        good_pair("p", "left", "right", description="d" * 20), max_description_chars=10
    )
    assert by_desc.truncated
    assert by_desc.left.description == "d" * 10
    by_title = codec.decode_pair(good_pair("p", "l" * 50, "right"), max_title_chars=8)
    assert by_title.truncated
    assert by_title.left.title == "l" * 8
    assert by_title.right.title == "right"
    by_brand = codec.decode_pair(good_pair("p", "l", "r", brand="b" * 9), max_attribute_chars=4)
    assert by_brand.truncated
    assert by_brand.right.brand == "bbbb"


def _pair_with_model_numbers(left: object, right: object) -> bytes:
    return orjson.dumps(
        {
            "event_id": "p",
            "left": {"id": "A1", "title": "sony camera", "model_number": left},
            "right": {"id": "B1", "title": "sony cam", "model_number": right},
        }
    )


def test_model_number_is_an_optional_string_validated_like_brand() -> None:
    event = codec.decode_pair(_pair_with_model_numbers("  DSC-W150 ", None))
    assert event.left.model_number == "DSC-W150"  # stripped, as the other optional strings
    assert event.right.model_number is None
    assert not event.truncated
    absent = codec.decode_pair(good_pair("p", "l", "r"))
    assert absent.left.model_number is None
    long = codec.decode_pair(_pair_with_model_numbers("m" * 9, "x"), max_attribute_chars=4)
    assert long.truncated
    assert long.left.model_number == "mmmm"
    assert code_of(codec.decode_pair, _pair_with_model_numbers(12345, None)) is not None
    assert not validator("product_pair_event").is_valid(
        orjson.loads(_pair_with_model_numbers(12345, None))
    )


def test_model_number_round_trips_and_reaches_the_serializer() -> None:
    from streamer.model.serialize import serialize_product

    event = ProductPairEvent(
        "p", Product("A1", "Sony Camera", model_number="DSC-W150"), Product("B1", "sony cam")
    )
    raw = codec.encode_pair_event(event)
    assert orjson.loads(raw)["left"]["model_number"] == "DSC-W150"
    decoded = codec.decode_pair(raw)
    assert decoded == event
    text = serialize_product(
        {"title": decoded.left.title, "model_number": decoded.left.model_number}
    )
    assert text == "title sony camera model dsc-w150"


# --- round trips ----------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(
    lambda s: s.strip() == s and s != ""
)
_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,30}", fullmatch=True)
_opt = st.none() | st.text(st.characters(codec="utf-8"), max_size=30).map(str.strip)
_ts = st.none() | st.integers(0, codec.MAX_TS_MS)


@st.composite
def query_events(draw: st.DrawFn) -> QueryEvent:
    return QueryEvent(
        event_id=draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=128)),
        query=draw(_text),
        ts_ms=draw(_ts),
        locale=draw(st.none() | st.text(st.characters(codec="utf-8"), max_size=64)),
        session_id=draw(st.none() | st.text(st.characters(codec="utf-8"), max_size=128)),
    )


@st.composite
def products(draw: st.DrawFn) -> Product:
    price = draw(st.none() | st.floats(0, 1e9, allow_nan=False))
    return Product(draw(_ids), draw(_text), draw(_opt), draw(_opt), draw(_opt), price, draw(_opt))


@st.composite
def pair_events(draw: st.DrawFn) -> ProductPairEvent:
    return ProductPairEvent(draw(_ids), draw(products()), draw(products()), draw(_ts))


@FAST
@given(query_events())
def test_query_event_round_trip(event: QueryEvent) -> None:
    raw = codec.encode_query_event(event)
    assert codec.decode_query(raw) == event
    assert validator("query_event").is_valid(orjson.loads(raw))


@FAST
@given(pair_events())
def test_pair_event_round_trip(event: ProductPairEvent) -> None:
    raw = codec.encode_pair_event(event)
    assert codec.decode_pair(raw) == event
    assert validator("product_pair_event").is_valid(orjson.loads(raw))


_prob = st.floats(0, 1, allow_nan=False)
_name = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


@st.composite
def intent_results(draw: st.DrawFn) -> IntentResult:
    scores = draw(st.dictionaries(_name, _prob, min_size=1, max_size=5))
    intent = draw(st.sampled_from(sorted(scores)))
    return IntentResult(
        event_id=draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=128)),
        intent=intent,
        confidence=scores[intent],
        scores=scores,
        model=draw(_name),
        model_version=draw(_name),
        source_ts_ms=draw(_ts),
        processed_ts_ms=draw(st.integers(0, codec.MAX_TS_MS)),
        truncated=draw(st.booleans()),
    )


@st.composite
def duplicate_results(draw: st.DrawFn) -> DuplicateResult:
    score, threshold = draw(_prob), draw(_prob)
    return DuplicateResult(
        event_id=draw(_ids),
        left_id=draw(_ids),
        right_id=draw(_ids),
        score=score,
        is_duplicate=score >= threshold,
        threshold=threshold,
        model=draw(_name),
        model_version=draw(_name),
        source_ts_ms=draw(_ts),
        processed_ts_ms=draw(st.integers(0, codec.MAX_TS_MS)),
        truncated=draw(st.booleans()),
    )


@st.composite
def dead_letters(draw: st.DrawFn) -> DeadLetter:
    return DeadLetter(
        error_code=draw(st.sampled_from(list(ErrorCode))),
        reason=draw(_name),
        source_topic=draw(_ids),
        source_partition=draw(st.integers(0, 10_000)),
        source_offset=draw(st.integers(0, 2**62)),
        source_timestamp_ms=draw(st.none() | st.integers(-1, codec.MAX_TS_MS)),
        payload=draw(st.binary(max_size=200)),
        key=draw(st.none() | st.binary(max_size=40)),
        service=draw(_name),
        dlq_ts_ms=draw(st.integers(0, codec.MAX_TS_MS)),
        payload_truncated=draw(st.booleans()),
        event_id=draw(st.none() | _ids),
    )


@FAST
@given(intent_results())
def test_intent_result_round_trip_and_schema(result: IntentResult) -> None:
    raw = codec.encode_intent_result(result)
    validator("intent_result").validate(orjson.loads(raw))
    assert codec.decode_intent_result(raw) == result


@FAST
@given(duplicate_results())
def test_duplicate_result_round_trip_and_schema(result: DuplicateResult) -> None:
    raw = codec.encode_duplicate_result(result)
    validator("duplicate_result").validate(orjson.loads(raw))
    assert codec.decode_duplicate_result(raw) == result


@FAST
@given(dead_letters())
def test_dead_letter_round_trip_and_schema(letter: DeadLetter) -> None:
    raw = codec.encode_dead_letter(letter)
    validator("dead_letter").validate(orjson.loads(raw))
    assert codec.decode_dead_letter(raw) == letter


def test_dead_letter_for_every_bad_sample_validates() -> None:
    check = validator("dead_letter")
    for _, _, raw in BAD_QUERY_RECORDS:
        try:
            codec.decode_query(raw)
        except DecodeError as err:
            letter = DeadLetter.for_record(
                err.code,
                err.reason,
                source_topic="search.queries.v1",
                source_partition=3,
                source_offset=17,
                source_timestamp_ms=1_700_000_000_000,
                payload=raw,
                key=b"k",
                service="streamer-test",
                dlq_ts_ms=1_700_000_000_001,
            )
            encoded = codec.encode_dead_letter(letter)
            check.validate(orjson.loads(encoded))
            # the dead letter of the largest allowed record must fit a default broker message
            assert len(encoded) < 1_000_000
            back = codec.decode_dead_letter(encoded)
            assert back.error_code is err.code
            assert back.payload == raw[:DLQ_MAX_PAYLOAD_BYTES]
            assert back.payload_truncated == (len(raw) > DLQ_MAX_PAYLOAD_BYTES)
        else:
            pytest.fail("a bad sample was accepted")


def test_dead_letter_keeps_payload_whole_up_to_the_cap() -> None:
    common: dict[str, Any] = {
        "source_topic": "t",
        "source_partition": 0,
        "source_offset": 0,
        "source_timestamp_ms": None,
        "key": None,
        "service": "s",
        "dlq_ts_ms": 0,
    }
    whole = DeadLetter.for_record(
        ErrorCode.NOT_JSON, "r", payload=b"x" * DLQ_MAX_PAYLOAD_BYTES, **common
    )
    assert not whole.payload_truncated
    assert len(whole.payload) == DLQ_MAX_PAYLOAD_BYTES
    cut = DeadLetter.for_record(
        ErrorCode.RECORD_TOO_LARGE, "r", payload=b"x" * (DLQ_MAX_PAYLOAD_BYTES + 1), **common
    )
    assert cut.payload_truncated
    assert len(cut.payload) == DLQ_MAX_PAYLOAD_BYTES
    assert str(DLQ_MAX_PAYLOAD_BYTES + 1) in cut.reason
    assert DeadLetter.for_record(ErrorCode.NOT_JSON, "r", payload=None, **common).payload == b""


# --- result encoding guards -----------------------------------------------------------------


def _intent(confidence: Any, scores: dict[str, Any]) -> IntentResult:
    return IntentResult("e", "a", confidence, scores, "m", "1", 5, 6)


def test_encoders_accept_numpy_scalars() -> None:
    result = _intent(np.float32(0.75), {"a": np.float32(0.75), "b": np.float64(0.25)})
    back = orjson.loads(codec.encode_intent_result(result))
    assert back["confidence"] == 0.75
    assert back["scores"] == {"a": 0.75, "b": 0.25}


def test_float_rounding_overshoot_is_clamped() -> None:
    back = orjson.loads(codec.encode_intent_result(_intent(1.0000001, {"a": 1.0000001})))
    assert back["confidence"] == 1.0


@pytest.mark.parametrize(
    "result",
    [
        _intent(math.nan, {"a": 0.5}),
        _intent(0.5, {"a": math.nan}),
        _intent(1.5, {"a": 0.5}),
        _intent(0.5, {}),
        IntentResult("e", "a", 0.5, {"a": 0.5}, "", "1", 5, 6),
    ],
)
def test_bad_intent_results_raise_encode_error(result: IntentResult) -> None:
    with pytest.raises(EncodeError):
        codec.encode_intent_result(result)


def test_bad_duplicate_score_raises_encode_error() -> None:
    with pytest.raises(EncodeError):
        codec.encode_duplicate_result(
            DuplicateResult("e", "A", "B", math.nan, False, 0.5, "m", "1", None, 1)
        )


def test_missing_kafka_timestamp_becomes_null() -> None:
    back = orjson.loads(
        codec.encode_intent_result(IntentResult("e", "a", 1, {"a": 1}, "m", "1", -1, 2))
    )
    assert back["source_ts_ms"] is None


# --- fuzzing --------------------------------------------------------------------------------

DECODERS: list[Callable[[bytes], object]] = [
    codec.decode_query,
    codec.decode_pair,
    codec.decode_intent_result,
    codec.decode_duplicate_result,
    codec.decode_dead_letter,
]

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    ["event_id", "query", "ts_ms", "locale", "session_id", "left", "right", "id", "title",
     "price", "description", "brand", "product_type", "model_number", "schema", "scores",
     "confidence",
     "payload_b64", "key_b64", "error_code"]
)  # fmt: skip
_near_records = st.dictionaries(
    _field_names,
    st.deferred(lambda: _json_values | st.dictionaries(_field_names, _json_values, max_size=6)),
    max_size=8,
)


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(raw: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(DecodeError):
            decode(raw)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values | _near_records)
def test_random_json_raises_only_decode_error(obj: Any) -> None:
    raw = orjson.dumps(obj)
    for decode in DECODERS:
        with contextlib.suppress(DecodeError):
            decode(raw)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200), st.integers(0, 199))
def test_corrupted_good_records_raise_only_decode_error(noise: bytes, at: int) -> None:
    for raw, decode in (
        (good_query("q-1", "red running shoes", ts_ms=1), codec.decode_query),
        (good_pair("p-1", "usb cable", "usb-c cable", price=3.5), codec.decode_pair),
    ):
        at = min(at, len(raw))
        with contextlib.suppress(DecodeError):
            decode(raw[:at] + noise + raw[at + len(noise) :])


def test_base64_payload_is_validated() -> None:
    letter = DeadLetter.for_record(
        ErrorCode.NOT_JSON,
        "r",
        source_topic="t",
        source_partition=0,
        source_offset=0,
        source_timestamp_ms=None,
        payload=b"\x00\xff",
        key=None,
        service="s",
        dlq_ts_ms=0,
    )
    obj = orjson.loads(codec.encode_dead_letter(letter))
    assert base64.b64decode(obj["payload_b64"]) == b"\x00\xff"
    obj["payload_b64"] = "not base64!"
    assert code_of(codec.decode_dead_letter, orjson.dumps(obj)) is ErrorCode.INVALID_VALUE


def test_base64_with_padding_after_a_full_group_is_rejected() -> None:
    """Regression (found by tests/fuzz/fuzz_codec.py): b64decode(validate=True) ignores '=' after
    a complete 4-character group, so 'QUJD=' decoded while the schema's pattern rejects it."""
    letter = DeadLetter.for_record(
        ErrorCode.NOT_JSON, "r", source_topic="t", source_partition=0, source_offset=0,
        source_timestamp_ms=None, payload=b"ABC", key=b"k", service="s", dlq_ts_ms=0,
    )  # fmt: skip
    obj = orjson.loads(codec.encode_dead_letter(letter))
    dlq = validator("dead_letter")
    for field, bad in (("payload_b64", "QUJD="), ("payload_b64", "QUJD=="), ("key_b64", "aw===")):
        broken = {**obj, field: bad}
        assert not dlq.is_valid(broken)
        assert code_of(codec.decode_dead_letter, orjson.dumps(broken)) is ErrorCode.INVALID_VALUE
    assert codec.decode_dead_letter(orjson.dumps(obj)).payload == b"ABC"


def test_result_integers_have_no_upper_bound_like_their_schemas() -> None:
    """Regression (found by tests/unit/test_fuzz_codec.py): the result decoders capped integers
    at 2**63, so processed_ts_ms = 2**64 - 1 (which the schema, minimum 0 only, accepts) failed."""
    result = IntentResult("q", "help", 0.5, {"help": 0.5}, "m", "1", 1, 2)
    obj = orjson.loads(codec.encode_intent_result(result))
    for value in (2**64 - 1, 1e300):
        big = {**obj, "processed_ts_ms": value, "source_ts_ms": value}
        assert validator("intent_result").is_valid(big)
        assert codec.decode_intent_result(orjson.dumps(big)).processed_ts_ms == int(value)
    assert code_of(codec.decode_intent_result, orjson.dumps({**obj, "processed_ts_ms": -1})) is (
        ErrorCode.INVALID_VALUE
    )
