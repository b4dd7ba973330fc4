"""Known-good and known-bad record values, for tests, the demo and the load generator.

`BAD_RECORDS` entries are rejected with their code by BOTH `decode_query` and `decode_pair`, so
they can be mixed into either input topic. `BAD_QUERY_RECORDS` / `BAD_PAIR_RECORDS` add the cases
that only make sense for one record kind. Together they cover every `ErrorCode` decoding can
produce (tests check this, and that each entry decodes to its code).
"""

from __future__ import annotations

import orjson

from streamer.errors import ErrorCode
from streamer.records.codec import encode_pair_event, encode_query_event
from streamer.records.types import MAX_RECORD_BYTES, Product, ProductPairEvent, QueryEvent


def good_query(
    event_id: str,
    text: str,
    *,
    ts_ms: int | None = None,
    locale: str | None = None,
    session_id: str | None = None,
) -> bytes:
    """A valid `search.queries.v1` record value."""
    return encode_query_event(QueryEvent(event_id, text, ts_ms, locale, session_id))


def good_pair(
    event_id: str,
    left_title: str,
    right_title: str,
    *,
    left_id: str = "B000000001",
    right_id: str = "B000000002",
    ts_ms: int | None = None,
    brand: str | None = None,
    description: str | None = None,
    price: float | None = None,
) -> bytes:
    """A valid `search.product-pairs.v1` record value (both sides share brand/description/price)."""
    left = Product(left_id, left_title, brand=brand, description=description, price=price)
    right = Product(right_id, right_title, brand=brand, description=description, price=price)
    return encode_pair_event(ProductPairEvent(event_id, left, right, ts_ms))


def _json(obj: object) -> bytes:
    return orjson.dumps(obj)


_LEFT = {"id": "B000000001", "title": "usb-c cable 2m"}
_RIGHT = {"id": "B000000002", "title": "usb c cable, 2 m"}
_PAIR = {"event_id": "pair-1", "left": _LEFT, "right": _RIGHT}

BAD_RECORDS: list[tuple[ErrorCode, str, bytes]] = [
    (ErrorCode.INVALID_UTF8, "lone continuation byte", b'{"event_id": "x\x80"}'),
    (ErrorCode.INVALID_UTF8, "latin-1 text", '{"query": "caf\u00e9"}'.encode("latin-1")),
    (ErrorCode.INVALID_UTF8, "UTF-8-encoded surrogate", b'{"query": "\xed\xa0\x80"}'),
    (ErrorCode.NOT_JSON, "empty value", b""),
    (ErrorCode.NOT_JSON, "plain text", b"hello world"),
    (ErrorCode.NOT_JSON, "truncated JSON", b'{"event_id": "q-1", "query": "sho'),
    (ErrorCode.NOT_JSON, "trailing comma", b'{"event_id": "q-1",}'),
    (ErrorCode.NOT_JSON, "byte order mark", b'\xef\xbb\xbf{"event_id": "q-1"}'),
    (ErrorCode.NOT_JSON, "NaN literal", b'{"event_id": "q-1", "ts_ms": NaN}'),
    (ErrorCode.NOT_JSON, "escaped lone surrogate", b'{"event_id": "\\ud800"}'),
    (ErrorCode.NOT_JSON, "nested 2000 deep", b"[" * 2000 + b"]" * 2000),
    (ErrorCode.NOT_AN_OBJECT, "array", b'[{"event_id": "q-1", "query": "shoes"}]'),
    (ErrorCode.NOT_AN_OBJECT, "string", b'"shoes"'),
    (ErrorCode.NOT_AN_OBJECT, "null", b"null"),
    (ErrorCode.NOT_AN_OBJECT, "number", b"42"),
    (ErrorCode.MISSING_FIELD, "empty object", b"{}"),
    (
        ErrorCode.MISSING_FIELD,
        "no event_id",
        _json({"query": "shoes", "left": _LEFT, "right": _RIGHT}),
    ),
    (ErrorCode.WRONG_TYPE, "event_id is a number", _json({"event_id": 7, "query": "shoes"})),
    (ErrorCode.WRONG_TYPE, "event_id is null", _json({"event_id": None, "query": "shoes"})),
    (ErrorCode.INVALID_VALUE, "event_id is empty", _json({"event_id": "", "query": "shoes"})),
    (ErrorCode.INVALID_VALUE, "event_id over 128 chars", _json({"event_id": "e" * 129})),
    (
        ErrorCode.EMPTY_TEXT,
        "query and both titles whitespace",
        _json(
            {
                "event_id": "e-1",
                "query": " \t\n\u3000",
                "left": {"id": "B000000001", "title": " "},
                "right": _RIGHT,
            }
        ),
    ),
    (
        ErrorCode.RECORD_TOO_LARGE,
        "one byte over the cap",
        b'{"event_id": "big", "query": "' + b"a" * MAX_RECORD_BYTES + b'"}',
    ),
]

BAD_QUERY_RECORDS: list[tuple[ErrorCode, str, bytes]] = [
    *BAD_RECORDS,
    (ErrorCode.MISSING_FIELD, "no query", _json({"event_id": "q-1"})),
    (ErrorCode.MISSING_FIELD, "query misspelt", _json({"event_id": "q-1", "querry": "shoes"})),
    (ErrorCode.WRONG_TYPE, "query is a list", _json({"event_id": "q-1", "query": ["shoes"]})),
    (ErrorCode.WRONG_TYPE, "query is null", _json({"event_id": "q-1", "query": None})),
    (ErrorCode.EMPTY_TEXT, "query is empty", _json({"event_id": "q-1", "query": ""})),
    (ErrorCode.EMPTY_TEXT, "query is spaces", _json({"event_id": "q-1", "query": "   "})),
    (
        ErrorCode.WRONG_TYPE,
        "ts_ms is a string",
        _json({"event_id": "q-1", "query": "shoes", "ts_ms": "1700000000000"}),
    ),
    (
        ErrorCode.WRONG_TYPE,
        "ts_ms is fractional",
        _json({"event_id": "q-1", "query": "shoes", "ts_ms": 1.5}),
    ),
    (
        ErrorCode.INVALID_VALUE,
        "ts_ms is negative",
        _json({"event_id": "q-1", "query": "shoes", "ts_ms": -1}),
    ),
    (
        ErrorCode.WRONG_TYPE,
        "locale is a number",
        _json({"event_id": "q-1", "query": "shoes", "locale": 1}),
    ),
    (
        ErrorCode.INVALID_VALUE,
        "session_id over 128 chars",
        _json({"event_id": "q-1", "query": "shoes", "session_id": "s" * 129}),
    ),
]

BAD_PAIR_RECORDS: list[tuple[ErrorCode, str, bytes]] = [
    *BAD_RECORDS,
    (ErrorCode.MISSING_FIELD, "no right product", _json({"event_id": "p-1", "left": _LEFT})),
    (
        ErrorCode.MISSING_FIELD,
        "left has no title",
        _json({**_PAIR, "left": {"id": "B000000001"}}),
    ),
    (ErrorCode.MISSING_FIELD, "right has no id", _json({**_PAIR, "right": {"title": "cable"}})),
    (ErrorCode.WRONG_TYPE, "left is a string", _json({**_PAIR, "left": "usb cable"})),
    (ErrorCode.WRONG_TYPE, "right is null", _json({**_PAIR, "right": None})),
    (
        ErrorCode.WRONG_TYPE,
        "price is a string",
        _json({**_PAIR, "left": {**_LEFT, "price": "9.99"}}),
    ),
    (
        ErrorCode.WRONG_TYPE,
        "description is a number",
        _json({**_PAIR, "right": {**_RIGHT, "description": 5}}),
    ),
    (ErrorCode.EMPTY_TEXT, "right title empty", _json({**_PAIR, "right": {**_RIGHT, "title": ""}})),
    (
        ErrorCode.INVALID_VALUE,
        "product id has a space",
        _json({**_PAIR, "left": {**_LEFT, "id": "B0 1"}}),
    ),
    (
        ErrorCode.INVALID_VALUE,
        "negative price",
        _json({**_PAIR, "right": {**_RIGHT, "price": -1.0}}),
    ),
]
