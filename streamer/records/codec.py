"""Bytes <-> typed records. Decoders raise only `DecodeError`, whatever the input.

The rules are those of the JSON Schema files in `schemas/` (tests prove both accept exactly the
same records), written out by hand: a generic validator costs tens of microseconds per record,
these checks cost about a microsecond, and the consumer's hot path sees 100k+ records/s.

Each check tests the happy case inline and only calls a helper to classify the failure, so a good
record pays one `type(v) is ...` comparison per field. Reasons name the field and the JSON type
found but never echo the value: values can be huge, and dead letters are read by people.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Final

import orjson

from streamer.errors import DecodeError, EncodeError, ErrorCode
from streamer.records.types import (
    DEAD_LETTER_SCHEMA,
    DUPLICATE_RESULT_SCHEMA,
    INTENT_RESULT_SCHEMA,
    MAX_RECORD_BYTES,
    DeadLetter,
    DuplicateResult,
    IntentResult,
    Product,
    ProductPairEvent,
    QueryEvent,
)

# Defaults for truncation, in characters (code points, as JSON Schema counts). Generous next to
# the model's token limits (16 tokens for queries, 128 for a pair): the tokenizer cuts to tokens
# later; these only bound the work and memory spent on absurd text.
DEFAULT_MAX_QUERY_CHARS: Final = 512
DEFAULT_MAX_TITLE_CHARS: Final = 512
DEFAULT_MAX_DESCRIPTION_CHARS: Final = 2048
DEFAULT_MAX_ATTRIBUTE_CHARS: Final = 256

# Bounds mirrored from schemas/*.v1.json (tests check the two agree).
MAX_EVENT_ID_CHARS: Final = 128
MAX_PRODUCT_ID_CHARS: Final = 128
MAX_LOCALE_CHARS: Final = 64
MAX_SESSION_ID_CHARS: Final = 128
MAX_TS_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_PRODUCT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")

# Tolerated float overshoot of a probability (float32 softmax/sigmoid rounding) before clamping.
_PROB_SLACK: Final = 1e-6
_MAX_REASON_CHARS: Final = 300
_MISSING: Final[Any] = object()

RawValue = bytes | bytearray | memoryview
"""What a Kafka client hands over as a record value (None, for a tombstone, is rejected too)."""
_ERROR_CODES: Final = {c.value: c for c in ErrorCode}


# ---------------------------------------------------------------------------------------------
# failure classification (cold path)


def _json_type(value: Any) -> str:
    """The JSON type name of a parsed value, for reasons."""
    if value is None:
        return "null"
    t = type(value)
    if t is bool:
        return "boolean"
    if t is int:
        return "integer"
    if t is float:
        return "integer" if value.is_integer() else "number"
    if t is str:
        return "string"
    if t is list:
        return "array"
    return "object"


def _wrong(path: str, value: Any, expected: str) -> DecodeError:
    """MISSING_FIELD if the value is absent, else WRONG_TYPE."""
    if value is _MISSING:
        return DecodeError(ErrorCode.MISSING_FIELD, f"missing required field '{path}'", path)
    return DecodeError(
        ErrorCode.WRONG_TYPE, f"field '{path}' must be {expected}, got {_json_type(value)}", path
    )


def _invalid(path: str, why: str) -> DecodeError:
    return DecodeError(ErrorCode.INVALID_VALUE, f"field '{path}' {why}", path)


def _not_json(raw: RawValue, exc: orjson.JSONDecodeError) -> DecodeError:
    """Tell invalid UTF-8 from bad JSON; orjson reports both as JSONDecodeError."""
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as ude:
        return DecodeError(ErrorCode.INVALID_UTF8, f"record is not valid UTF-8 (byte {ude.start})")
    return DecodeError(ErrorCode.NOT_JSON, f"record is not JSON: {str(exc)[:_MAX_REASON_CHARS]}")


# ---------------------------------------------------------------------------------------------
# field readers (hot path)


def _load(raw: Any, max_record_bytes: int) -> dict[str, Any]:
    """Parse one record value into a dict, or raise the DecodeError saying why not."""
    if type(raw) is not bytes and not isinstance(raw, (bytes, bytearray, memoryview)):
        if raw is None:
            raise DecodeError(ErrorCode.NOT_JSON, "record has no value (a tombstone)")
        raise DecodeError(
            ErrorCode.NOT_JSON, f"record value must be bytes, got {type(raw).__name__}"
        )
    size = raw.nbytes if type(raw) is memoryview else len(raw)
    if size > max_record_bytes:
        raise DecodeError(
            ErrorCode.RECORD_TOO_LARGE,
            f"record is {size} bytes, over the {max_record_bytes}-byte cap",
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _not_json(raw, exc) from None
    if type(obj) is not dict:
        raise DecodeError(
            ErrorCode.NOT_AN_OBJECT, f"top level must be a JSON object, got {_json_type(obj)}"
        )
    return obj


def _id(obj: dict[str, Any], name: str, path: str, max_chars: int) -> str:
    """A required identifier string of 1..max_chars characters."""
    v = obj.get(name, _MISSING)
    if type(v) is not str:
        raise _wrong(path, v, "a string")
    if not 0 < len(v) <= max_chars:
        raise _invalid(path, f"must be 1..{max_chars} characters long, got {len(v)}")
    return v


def _product_id(obj: dict[str, Any], path: str) -> str:
    """A required ASIN-like product id."""
    v = _id(obj, "id", path, MAX_PRODUCT_ID_CHARS)
    if _PRODUCT_ID.fullmatch(v) is None:
        raise _invalid(path, "must be ASCII letters/digits, then also . _ : / -")
    return v


def _text(obj: dict[str, Any], name: str, path: str, max_chars: int) -> tuple[str, bool]:
    """Required model text: stripped, non-empty, cut to max_chars; returns (text, truncated)."""
    v = obj.get(name, _MISSING)
    if type(v) is not str:
        raise _wrong(path, v, "a string")
    s = v.strip()
    if not s:
        raise DecodeError(ErrorCode.EMPTY_TEXT, f"field '{path}' is empty or whitespace", path)
    if len(s) > max_chars:
        return s[:max_chars].rstrip(), True
    return s, False


def _opt_text(obj: dict[str, Any], name: str, path: str, max_chars: int) -> tuple[str | None, bool]:
    """Optional text (string or null): stripped and cut to max_chars; returns (text, truncated)."""
    v = obj.get(name)
    if v is None:
        return None, False
    if type(v) is not str:
        raise _wrong(path, v, "a string or null")
    s = v.strip()
    if len(s) > max_chars:
        return s[:max_chars].rstrip(), True
    return s, False


def _opt_str(obj: dict[str, Any], name: str, path: str, max_chars: int) -> str | None:
    """Optional bounded string (string or null), kept as sent."""
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is not str:
        raise _wrong(path, v, "a string or null")
    if len(v) > max_chars:
        raise _invalid(path, f"must be at most {max_chars} characters long, got {len(v)}")
    return v


def _int(v: Any, path: str, lo: int | None, hi: int | None) -> int:
    """An integer in lo..hi (None: unbounded); JSON Schema counts 5.0 as an integer, so we do."""
    t = type(v)
    if t is float and v.is_integer():
        v = int(v)
    elif t is not int:
        raise _wrong(path, v, "an integer")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _invalid(path, f"must be in {lo}..{hi}" if hi is not None else f"must be >= {lo}")
    return v


def _opt_ts(obj: dict[str, Any], name: str, path: str) -> int | None:
    """Optional epoch-millis timestamp (integer or null)."""
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is int and 0 <= v <= MAX_TS_MS:
        return v
    return _int(v, path, 0, MAX_TS_MS)


def _opt_price(obj: dict[str, Any], path: str) -> float | None:
    """Optional non-negative number (or null)."""
    v = obj.get("price")
    if v is None:
        return None
    t = type(v)
    if t is not float and t is not int:
        raise _wrong(path, v, "a number or null")
    if v < 0:
        raise _invalid(path, "must be >= 0")
    return float(v)


def _object(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """A required nested object."""
    v = obj.get(name, _MISSING)
    if type(v) is not dict:
        raise _wrong(name, v, "an object")
    return v


# ---------------------------------------------------------------------------------------------
# input events


def decode_query(
    raw: RawValue,
    *,
    max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> QueryEvent:
    """Decode and validate one `search.queries.v1` record value (schemas/query_event.v1.json)."""
    obj = _load(raw, max_record_bytes)
    event_id = _id(obj, "event_id", "event_id", MAX_EVENT_ID_CHARS)
    query, truncated = _text(obj, "query", "query", max_query_chars)
    ts_ms = _opt_ts(obj, "ts_ms", "ts_ms")
    locale = _opt_str(obj, "locale", "locale", MAX_LOCALE_CHARS)
    session_id = _opt_str(obj, "session_id", "session_id", MAX_SESSION_ID_CHARS)
    # positional: keywords add ~8% to a frozen dataclass construction (measured, 3.11)
    return QueryEvent(event_id, query, ts_ms, locale, session_id, truncated)


def _product(
    obj: dict[str, Any], side: str, max_title: int, max_desc: int, max_attr: int
) -> tuple[Product, bool]:
    p = _object(obj, side)
    pid = _product_id(p, f"{side}.id")
    title, t1 = _text(p, "title", f"{side}.title", max_title)
    brand, t2 = _opt_text(p, "brand", f"{side}.brand", max_attr)
    ptype, t3 = _opt_text(p, "product_type", f"{side}.product_type", max_attr)
    desc, t4 = _opt_text(p, "description", f"{side}.description", max_desc)
    price = _opt_price(p, f"{side}.price")
    model_number, t5 = _opt_text(p, "model_number", f"{side}.model_number", max_attr)
    product = Product(pid, title, brand, ptype, desc, price, model_number)
    return product, t1 or t2 or t3 or t4 or t5


def decode_pair(
    raw: RawValue,
    *,
    max_title_chars: int = DEFAULT_MAX_TITLE_CHARS,
    max_description_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS,
    max_attribute_chars: int = DEFAULT_MAX_ATTRIBUTE_CHARS,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> ProductPairEvent:
    """Decode and validate one `search.product-pairs.v1` record (product_pair_event.v1.json).

    `max_attribute_chars` bounds `brand`, `product_type` and `model_number`.
    """
    obj = _load(raw, max_record_bytes)
    event_id = _id(obj, "event_id", "event_id", MAX_EVENT_ID_CHARS)
    ts_ms = _opt_ts(obj, "ts_ms", "ts_ms")
    limits = (max_title_chars, max_description_chars, max_attribute_chars)
    left, lt = _product(obj, "left", *limits)
    right, rt = _product(obj, "right", *limits)
    return ProductPairEvent(event_id, left, right, ts_ms, lt or rt)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def encode_query_event(e: QueryEvent) -> bytes:
    """Serialize a query event as upstream would send it (absent optional fields are omitted)."""
    return orjson.dumps(
        _drop_none(
            {
                "event_id": e.event_id,
                "query": e.query,
                "ts_ms": e.ts_ms,
                "locale": e.locale,
                "session_id": e.session_id,
            }
        )
    )


def _product_dict(p: Product) -> dict[str, Any]:
    return _drop_none(
        {
            "id": p.id,
            "title": p.title,
            "brand": p.brand,
            "product_type": p.product_type,
            "description": p.description,
            "price": p.price,
            "model_number": p.model_number,
        }
    )


def encode_pair_event(e: ProductPairEvent) -> bytes:
    """Serialize a product-pair event as upstream would send it."""
    return orjson.dumps(
        _drop_none(
            {
                "event_id": e.event_id,
                "ts_ms": e.ts_ms,
                "left": _product_dict(e.left),
                "right": _product_dict(e.right),
            }
        )
    )


# ---------------------------------------------------------------------------------------------
# results


def _prob(value: Any, what: str) -> float:
    """A probability as a plain float (numpy scalars included); NaN or out of range is an error."""
    f = float(value)
    if 0.0 <= f <= 1.0:
        return f
    if 1.0 < f <= 1.0 + _PROB_SLACK:
        return 1.0
    if -_PROB_SLACK <= f < 0.0:
        return 0.0
    raise EncodeError(f"{what} must be a probability in 0..1, got {f!r}")


def _source_ts(ts_ms: int | None) -> int | None:
    """Kafka reports -1 for a record without a timestamp; the result contract says null."""
    return None if ts_ms is None or ts_ms < 0 else int(ts_ms)


def _names(model: str, model_version: str) -> None:
    if not model or not model_version:
        raise EncodeError("model and model_version must be non-empty")


def encode_intent_result(r: IntentResult) -> bytes:
    """Serialize an intent result (intent_result.v1.json); raises EncodeError on NaN/out of range."""
    _names(r.model, r.model_version)
    scores = {str(k): _prob(v, f"scores[{k!r}]") for k, v in r.scores.items()}
    if not scores:
        raise EncodeError("scores must hold at least one label")
    return orjson.dumps(
        {
            "schema": r.schema,
            "event_id": r.event_id,
            "intent": r.intent,
            "confidence": _prob(r.confidence, "confidence"),
            "scores": scores,
            "model": r.model,
            "model_version": r.model_version,
            "source_ts_ms": _source_ts(r.source_ts_ms),
            "processed_ts_ms": int(r.processed_ts_ms),
            "truncated": bool(r.truncated),
        }
    )


def encode_duplicate_result(r: DuplicateResult) -> bytes:
    """Serialize a duplicate result (duplicate_result.v1.json); raises EncodeError on NaN."""
    _names(r.model, r.model_version)
    return orjson.dumps(
        {
            "schema": r.schema,
            "event_id": r.event_id,
            "left_id": r.left_id,
            "right_id": r.right_id,
            "score": _prob(r.score, "score"),
            "is_duplicate": bool(r.is_duplicate),
            "threshold": _prob(r.threshold, "threshold"),
            "model": r.model,
            "model_version": r.model_version,
            "source_ts_ms": _source_ts(r.source_ts_ms),
            "processed_ts_ms": int(r.processed_ts_ms),
            "truncated": bool(r.truncated),
        }
    )


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def encode_dead_letter(d: DeadLetter) -> bytes:
    """Serialize a dead letter (dead_letter.v1.json): raw payload and key as base64."""
    letter: dict[str, Any] = {
        "schema": d.schema,
        "error_code": d.error_code.value,
        "reason": d.reason or d.error_code.value,
        "source_topic": d.source_topic,
        "source_partition": int(d.source_partition),
        "source_offset": int(d.source_offset),
        "source_timestamp_ms": d.source_timestamp_ms,
        "payload_b64": _b64(d.payload),
        "payload_truncated": bool(d.payload_truncated),
        "key_b64": _b64(d.key),
        "event_id": d.event_id,
        "service": d.service,
        "dlq_ts_ms": int(d.dlq_ts_ms),
    }
    if d.source_offset_end is not None:  # a skipped range (UNREADABLE_BATCH) only
        letter["source_offset_end"] = int(d.source_offset_end)
    return orjson.dumps(letter)


# Result decoders are for downstream consumers and tests, not the hot path: same rules as the
# schemas, checked plainly.


def _schema_const(obj: dict[str, Any], expected: str) -> str:
    v = obj.get("schema", _MISSING)
    if type(v) is not str:
        raise _wrong("schema", v, "a string")
    if v != expected:
        raise _invalid("schema", f"must be {expected!r}")
    return v


def _req_str(obj: dict[str, Any], name: str) -> str:
    """A required non-empty string."""
    v = obj.get(name, _MISSING)
    if type(v) is not str:
        raise _wrong(name, v, "a string")
    if not v:
        raise _invalid(name, "must not be empty")
    return v


def _req_prob(obj: dict[str, Any], name: str) -> float:
    v = obj.get(name, _MISSING)
    t = type(v)
    if t is not float and t is not int:
        raise _wrong(name, v, "a number")
    if not 0 <= v <= 1:
        raise _invalid(name, "must be in 0..1")
    return float(v)


def _req_bool(obj: dict[str, Any], name: str) -> bool:
    v = obj.get(name, _MISSING)
    if type(v) is not bool:
        raise _wrong(name, v, "a boolean")
    return v


def _req_int(obj: dict[str, Any], name: str, lo: int = 0) -> int:
    # The result schemas set no maximum, so neither does the codec (a bound of 2**63 here
    # refused 2**64 - 1, which the schema accepts: found by tests/unit/test_fuzz_codec.py).
    return _int(obj.get(name, _MISSING), name, lo, None)


def _req_opt_ts(obj: dict[str, Any], name: str) -> int | None:
    """A required field that may be null: an integer >= 0 or null."""
    v = obj.get(name, _MISSING)
    return None if v is None else _int(v, name, 0, None)


def _b64_field(obj: dict[str, Any], name: str) -> bytes:
    """A required base64 string, decoded."""
    v = obj.get(name, _MISSING)
    if type(v) is not str:
        raise _wrong(name, v, "a base64 string")
    # b64decode (even binascii's strict mode) ignores padding after a complete 4-character
    # group ("QUJD=" decodes); the schema allows only canonical padding (found by fuzzing).
    if len(v) % 4:
        raise _invalid(name, "is not valid base64")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(name, "is not valid base64") from None


def decode_intent_result(
    raw: RawValue, *, max_record_bytes: int = MAX_RECORD_BYTES
) -> IntentResult:
    """Decode a `search.query-intents.v1` record (for consumers and tests)."""
    obj = _load(raw, max_record_bytes)
    schema = _schema_const(obj, INTENT_RESULT_SCHEMA)
    event_id = _id(obj, "event_id", "event_id", MAX_EVENT_ID_CHARS)
    intent = _req_str(obj, "intent")
    confidence = _req_prob(obj, "confidence")
    scores = obj.get("scores", _MISSING)
    if type(scores) is not dict:
        raise _wrong("scores", scores, "an object")
    if not scores:
        raise _invalid("scores", "must hold at least one label")
    parsed = {label: _req_prob(scores, label) for label in scores}
    return IntentResult(
        event_id=event_id,
        intent=intent,
        confidence=confidence,
        scores=parsed,
        model=_req_str(obj, "model"),
        model_version=_req_str(obj, "model_version"),
        source_ts_ms=_req_opt_ts(obj, "source_ts_ms"),
        processed_ts_ms=_req_int(obj, "processed_ts_ms"),
        truncated=_req_bool(obj, "truncated"),
        schema=schema,
    )


def decode_duplicate_result(
    raw: RawValue, *, max_record_bytes: int = MAX_RECORD_BYTES
) -> DuplicateResult:
    """Decode a `search.product-duplicates.v1` record (for consumers and tests)."""
    obj = _load(raw, max_record_bytes)
    schema = _schema_const(obj, DUPLICATE_RESULT_SCHEMA)
    return DuplicateResult(
        event_id=_id(obj, "event_id", "event_id", MAX_EVENT_ID_CHARS),
        left_id=_id(obj, "left_id", "left_id", MAX_PRODUCT_ID_CHARS),
        right_id=_id(obj, "right_id", "right_id", MAX_PRODUCT_ID_CHARS),
        score=_req_prob(obj, "score"),
        is_duplicate=_req_bool(obj, "is_duplicate"),
        threshold=_req_prob(obj, "threshold"),
        model=_req_str(obj, "model"),
        model_version=_req_str(obj, "model_version"),
        source_ts_ms=_req_opt_ts(obj, "source_ts_ms"),
        processed_ts_ms=_req_int(obj, "processed_ts_ms"),
        truncated=_req_bool(obj, "truncated"),
        schema=schema,
    )


def decode_dead_letter(
    raw: RawValue, *, max_record_bytes: int = 2 * MAX_RECORD_BYTES
) -> DeadLetter:
    """Decode a `search.streamer.dlq.v1` record (for the replay tool, operators and tests)."""
    obj = _load(raw, max_record_bytes)
    schema = _schema_const(obj, DEAD_LETTER_SCHEMA)
    code_value = obj.get("error_code", _MISSING)
    if type(code_value) is not str:
        raise _wrong("error_code", code_value, "a string")
    code = _ERROR_CODES.get(code_value)
    if code is None:
        raise _invalid("error_code", "is not a known ErrorCode")
    src_ts = obj.get("source_timestamp_ms", _MISSING)
    event_id = obj.get("event_id")
    if event_id is not None and type(event_id) is not str:
        raise _wrong("event_id", event_id, "a string or null")
    src_ts = None if src_ts is None else _int(src_ts, "source_timestamp_ms", None, None)
    end = obj.get("source_offset_end")
    end = None if end is None else _int(end, "source_offset_end", 1, None)
    return DeadLetter(
        error_code=code,
        reason=_req_str(obj, "reason"),
        source_topic=_req_str(obj, "source_topic"),
        source_partition=_req_int(obj, "source_partition"),
        source_offset=_req_int(obj, "source_offset"),
        source_timestamp_ms=src_ts,
        payload=_b64_field(obj, "payload_b64"),
        key=None if obj.get("key_b64", _MISSING) is None else _b64_field(obj, "key_b64"),
        service=_req_str(obj, "service"),
        dlq_ts_ms=_req_int(obj, "dlq_ts_ms"),
        payload_truncated=_req_bool(obj, "payload_truncated"),
        event_id=event_id,
        schema=schema,
        source_offset_end=end,
    )
