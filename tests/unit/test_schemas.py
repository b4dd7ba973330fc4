"""The JSON Schema files and the hand-written codec checks accept exactly the same records.

Hypothesis builds valid records and breaks them systematically (drop a field, swap in a value of
another type, null, empty or whitespace text, too long ids, out-of-range numbers, extra fields),
then asks both `jsonschema` (Draft 2020-12, used only here) and the codec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streamer.errors import DecodeError, ErrorCode
from streamer.records import codec

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NAMES = ["query_event", "product_pair_event", "intent_result", "duplicate_result", "dead_letter"]
AGREE = settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])


def load(name: str) -> dict[str, Any]:
    """schemas/<name>.v1.json as a dict."""
    return json.loads((SCHEMAS / f"{name}.v1.json").read_text())


QUERY = Draft202012Validator(load("query_event"))
PAIR = Draft202012Validator(load("product_pair_event"))


@pytest.mark.parametrize("name", NAMES)
def test_schema_files_are_valid_draft_2020_12(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"{name}.v1")


def test_error_code_enum_matches_the_dead_letter_schema() -> None:
    # codes may only be added; adding one in errors.py must add it to the schema too
    assert load("dead_letter")["properties"]["error_code"]["enum"] == [c.value for c in ErrorCode]


def test_codec_bounds_match_the_schemas() -> None:
    q = load("query_event")["properties"]
    assert q["event_id"]["maxLength"] == codec.MAX_EVENT_ID_CHARS
    assert q["ts_ms"]["maximum"] == codec.MAX_TS_MS
    assert q["locale"]["maxLength"] == codec.MAX_LOCALE_CHARS
    assert q["session_id"]["maxLength"] == codec.MAX_SESSION_ID_CHARS
    product = load("product_pair_event")["$defs"]["product"]["properties"]
    assert product["id"]["maxLength"] == codec.MAX_PRODUCT_ID_CHARS


# --- generators -----------------------------------------------------------------------------

# Characters where whitespace rules could differ between Python's str.strip and the schema's \S.
_TRICKY = " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u200b\u2028\u3000\ufeff"
_chars = st.characters(codec="utf-8") | st.sampled_from(_TRICKY)
_text = st.text(_chars, max_size=12)
_words = st.text(_chars, min_size=1, max_size=12).filter(lambda s: not s.isspace())
_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,12}", fullmatch=True)

# Values swapped into fields: every JSON type, boundary numbers, boundary and tricky strings.
_ANY_VALUES = [
    None, True, False, 0, -1, 1, 1.5, 5.0, -0.5, 1e30, 2**63 - 1, -(2**63),
    253_402_300_799_999, 253_402_300_800_000, "", " ", "\u3000", "\n", "x", "B01\n", "b 1",
    "_x", "e" * 128, "e" * 129, "s" * 65, [], ["x"], {}, {"id": "A", "title": "t"},
]  # fmt: skip
_values = (
    st.sampled_from(_ANY_VALUES)
    | _text
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)


@st.composite
def valid_query(draw: st.DrawFn) -> dict[str, Any]:
    """A record both sides should accept (optional fields present or not)."""
    obj: dict[str, Any] = {
        "event_id": draw(st.text(_chars, min_size=1, max_size=128)),
        "query": draw(_words),
    }
    for name, strategy in (
        ("ts_ms", st.none() | st.integers(0, codec.MAX_TS_MS)),
        ("locale", st.none() | st.text(_chars, max_size=64)),
        ("session_id", st.none() | st.text(_chars, max_size=128)),
    ):
        if draw(st.booleans()):
            obj[name] = draw(strategy)
    return obj


@st.composite
def valid_product(draw: st.DrawFn) -> dict[str, Any]:
    """A product both sides should accept."""
    obj: dict[str, Any] = {"id": draw(_ids), "title": draw(_words)}
    for name in ("brand", "product_type", "description", "model_number"):
        if draw(st.booleans()):
            obj[name] = draw(st.none() | _text)
    if draw(st.booleans()):
        obj["price"] = draw(st.none() | st.integers(0, 10**6) | st.floats(0, 1e6))
    return obj


@st.composite
def valid_pair(draw: st.DrawFn) -> dict[str, Any]:
    """A pair both sides should accept."""
    obj: dict[str, Any] = {
        "event_id": draw(st.text(_chars, min_size=1, max_size=128)),
        "left": draw(valid_product()),
        "right": draw(valid_product()),
    }
    if draw(st.booleans()):
        obj["ts_ms"] = draw(st.none() | st.integers(0, codec.MAX_TS_MS))
    return obj


def _paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in obj.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(_paths(value, (*prefix, key)))
    return out


_KNOWN = ["event_id", "query", "ts_ms", "locale", "session_id", "left", "right", "id", "title",
          "brand", "product_type", "description", "model_number", "price", "extra"]  # fmt: skip


def _json_int(x: float) -> float:
    return x if not isinstance(x, int) or -(2**63) <= x < 2**64 else float(x)


def _tweak(draw: st.DrawFn, value: Any) -> Any:
    """A value next to `value` that sits just across one of the schema's boundaries."""
    if isinstance(value, str):
        return draw(
            st.sampled_from(
                [
                    "",
                    draw(st.text(st.sampled_from(_TRICKY), min_size=1, max_size=4)),
                    value + draw(st.sampled_from(_TRICKY)),
                    value[:1] + " " + value[1:],
                    value * 70,
                    value[:1],
                ]
            )
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        near = [-value - 1, -0.5, value + 0.5, value * 1e20, float(value)]
        # orjson writes integers of at most 64 bits; a float stands in for larger ones
        return draw(st.sampled_from([_json_int(x) for x in near]))
    return draw(_values)


@st.composite
def broken(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid record with 1..3 mutations: delete, replace, tweak or add a field, at any depth."""
    obj = draw(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(obj)
        kind = draw(st.sampled_from(["tweak", "replace", "delete", "add"]))
        if kind == "add" or not paths:
            parents = [()] + [p for p in paths if isinstance(_get(obj, p), dict)]
            parent = _get(obj, draw(st.sampled_from(parents)))
            parent[draw(st.sampled_from(_KNOWN))] = draw(_values)
            continue
        path = draw(st.sampled_from(paths))
        parent = _get(obj, path[:-1])
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "tweak":
            parent[path[-1]] = _tweak(draw, parent[path[-1]])
        else:
            parent[path[-1]] = draw(_values)
    return obj


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _codec_accepts(decode: Any, obj: Any) -> bool:
    try:
        decode(orjson.dumps(obj))
    except DecodeError:
        return False
    return True


# --- agreement ------------------------------------------------------------------------------


@AGREE
@given(valid_query() | broken(valid_query()))
def test_query_codec_agrees_with_schema(obj: dict[str, Any]) -> None:
    assert _codec_accepts(codec.decode_query, obj) == QUERY.is_valid(obj), obj


@AGREE
@given(valid_pair() | broken(valid_pair()))
def test_pair_codec_agrees_with_schema(obj: dict[str, Any]) -> None:
    assert _codec_accepts(codec.decode_pair, obj) == PAIR.is_valid(obj), obj


# Systematic part: every field of a minimal and a full record, set to every boundary value in
# turn (and deleted), on both sides. Random combinations above; exhaustive single changes here.
_BOUNDARY = [
    *_ANY_VALUES, -0.0, 0.5, 1700000000000.0, 1700000000000.5, -1700000000000, 2**64 - 1,
    "\u3000x", "x\u3000", "\u200b", "\ufeff", "\x1c", "\x85", "\u2028 \u2029", "A", "A.b_c:d/e-f",
    "a" * 129, "-A", ".A", "A\u00e9", "\u00e9",
]  # fmt: skip
_DELETE = object()
_BASE_QUERIES: list[dict[str, Any]] = [
    {"event_id": "q-1", "query": "red shoes"},
    {"event_id": "q-1", "query": "red shoes", "ts_ms": 1, "locale": "en-US", "session_id": "s"},
]
_FULL_PRODUCT = {"id": "B01", "title": "cable", "brand": "acme", "product_type": "cable",
                 "description": "usb", "price": 9.5, "model_number": "AC-1"}  # fmt: skip
_BASE_PAIRS: list[dict[str, Any]] = [
    {"event_id": "p-1", "left": {"id": "A", "title": "t"}, "right": {"id": "B", "title": "u"}},
    {"event_id": "p-1", "ts_ms": 5, "left": dict(_FULL_PRODUCT), "right": dict(_FULL_PRODUCT)},
]
_QUERY_FIELDS: list[tuple[str, ...]] = [
    ("event_id",),
    ("query",),
    ("ts_ms",),
    ("locale",),
    ("session_id",),
]
_PAIR_FIELDS: list[tuple[str, ...]] = [("event_id",), ("ts_ms",), ("left",), ("right",)] + [
    (side, name)
    for side in ("left", "right")
    for name in ("id", "title", "brand", "product_type", "description", "price", "model_number")
]


def _single_changes(
    bases: list[dict[str, Any]], fields: list[tuple[str, ...]]
) -> list[tuple[dict[str, Any], tuple[str, ...], Any]]:
    return [
        (base, path, value) for base in bases for path in fields for value in [_DELETE, *_BOUNDARY]
    ]


def _changed(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    obj = json.loads(json.dumps(base))
    parent = _get(obj, path[:-1])
    if value is _DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return obj


def test_every_single_field_change_agrees() -> None:
    cases = [
        (codec.decode_query, QUERY, _single_changes(_BASE_QUERIES, _QUERY_FIELDS)),
        (codec.decode_pair, PAIR, _single_changes(_BASE_PAIRS, _PAIR_FIELDS)),
    ]
    disagreements = []
    seen = {True: 0, False: 0}
    for decode, schema, changes in cases:
        for base, path, value in changes:
            obj = _changed(base, path, value)
            accepted = _codec_accepts(decode, obj)
            seen[accepted] += 1
            if accepted != schema.is_valid(obj):
                disagreements.append((".".join(path), value, accepted))
    assert not disagreements, disagreements[:20]
    assert seen[True] > 100
    assert seen[False] > 100


@settings(deadline=None, max_examples=100)
@given(valid_query())
def test_valid_queries_are_accepted(obj: dict[str, Any]) -> None:
    QUERY.validate(obj)
    codec.decode_query(orjson.dumps(obj))


@settings(deadline=None, max_examples=100)
@given(valid_pair())
def test_valid_pairs_are_accepted(obj: dict[str, Any]) -> None:
    PAIR.validate(obj)
    codec.decode_pair(orjson.dumps(obj))


@settings(deadline=None, max_examples=100)
@given(valid_query(), st.integers(1, 8))
def test_truncated_query_output_still_validates(obj: dict[str, Any], limit: int) -> None:
    event = codec.decode_query(orjson.dumps(obj), max_query_chars=limit)
    assert len(event.query) <= limit
    QUERY.validate(orjson.loads(codec.encode_query_event(event)))


@settings(deadline=None, max_examples=100)
@given(valid_pair(), st.integers(1, 8))
def test_truncated_pair_output_still_validates(obj: dict[str, Any], limit: int) -> None:
    event = codec.decode_pair(
        orjson.dumps(obj),
        max_title_chars=limit,
        max_description_chars=limit,
        max_attribute_chars=limit,
    )
    PAIR.validate(orjson.loads(codec.encode_pair_event(event)))
