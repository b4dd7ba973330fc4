"""What must hold for ANY record value, whatever the bytes: the decoders' two contracts.

1. The only exception a decoder raises is `DecodeError` (anything else would crash the
   consumer's hot path or the replay tool).
2. The codec and the JSON Schema agree: a record the codec accepts is valid under its schema,
   and a record the schema accepts is accepted by the codec.

"Valid under the schema" is judged on the document as Python's `json` module reads it. Where
the two parsers disagree about what JSON *is*, the codec (orjson) is stricter on purpose and the
record goes to the DLQ as NOT_JSON: a lone UTF-16 surrogate escape, a byte order mark, a number
that overflows a double (1e400), NaN/Infinity (not JSON at all; Python reads them), nesting
deeper than 1,024. Those are checked for their error code, not for schema agreement.

Used by the hypothesis tests (tests/unit/test_fuzz_codec.py) and the coverage-guided fuzzer
(tests/fuzz/fuzz_codec.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from streamer.errors import DecodeError, ErrorCode
from streamer.records import codec
from streamer.records.samples import BAD_RECORDS, good_pair, good_query
from streamer.records.types import MAX_RECORD_BYTES

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

# decoder, its schema file, its size cap
DECODERS: list[tuple[str, Callable[[bytes], object], str, int]] = [
    ("decode_query", codec.decode_query, "query_event", MAX_RECORD_BYTES),
    ("decode_pair", codec.decode_pair, "product_pair_event", MAX_RECORD_BYTES),
    ("decode_intent_result", codec.decode_intent_result, "intent_result", MAX_RECORD_BYTES),
    (
        "decode_duplicate_result",
        codec.decode_duplicate_result,
        "duplicate_result",
        MAX_RECORD_BYTES,
    ),
    ("decode_dead_letter", codec.decode_dead_letter, "dead_letter", 2 * MAX_RECORD_BYTES),
]

# What orjson refuses that a lenient parser reads: the codec must say NOT_JSON (or INVALID_UTF8).
PARSE_CODES = {ErrorCode.NOT_JSON, ErrorCode.INVALID_UTF8}


class OracleFailure(AssertionError):
    """A decoder broke one of its contracts on this input."""


@cache
def validator(name: str) -> Draft202012Validator:
    """The Draft 2020-12 validator of schemas/<name>.v1.json."""
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.v1.json").read_text()))


def _reference(raw: bytes) -> tuple[bool, Any]:
    """(orjson parses it, the document the schema judges).

    The schema judges Python's reading (exact big integers) where Python reads the input, else
    orjson's (Python gives up on nesting deeper than its recursion limit, ~1,000, where orjson
    still parses up to 1,024).
    """
    try:
        strict_doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False, None
    try:
        return True, json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return True, strict_doc


def check(raw: bytes) -> dict[str, bool]:
    """Run every decoder on raw; raise OracleFailure on a broken contract.

    Returns {decoder name: accepted} so callers can count what the input reached.
    """
    strict_ok, doc = _reference(raw)
    accepted: dict[str, bool] = {}
    for name, decode, schema, cap in DECODERS:
        try:
            decode(raw)
            ok, code = True, None
        except DecodeError as err:
            ok, code = False, err.code
        except Exception as exc:  # the contract under test: nothing else may escape
            raise OracleFailure(f"{name} raised {type(exc).__name__}: {exc!r}") from exc
        accepted[name] = ok
        if len(raw) > cap:
            if ok or code is not ErrorCode.RECORD_TOO_LARGE:
                raise OracleFailure(f"{name}: {len(raw)} bytes over the cap gave {code}")
            continue
        if not strict_ok:
            if ok or code not in PARSE_CODES:
                raise OracleFailure(f"{name}: orjson refuses the input but the codec said {code}")
            continue
        if not isinstance(doc, dict):
            if ok:
                raise OracleFailure(f"{name} accepted a non-object: {raw[:80]!r}")
            continue
        valid = validator(schema).is_valid(doc)
        if ok != valid:
            raise OracleFailure(
                f"{name} {'accepted' if ok else 'rejected (' + str(code) + ')'} a record the "
                f"schema {'rejects' if not valid else 'accepts'}: {raw[:300]!r}"
            )
    return accepted


def seeds() -> list[bytes]:
    """Known records of every kind: the places the fuzzer starts mutating from."""
    import orjson

    from streamer.errors import ErrorCode
    from streamer.records.types import DeadLetter, DuplicateResult, IntentResult

    out = [raw for _code, _desc, raw in BAD_RECORDS]
    out += [
        good_query("q-1", "red running shoes", ts_ms=1, locale="en-US", session_id="s"),
        good_query("q-2", "  where is my order\u3000"),
        good_pair("p-1", "usb cable", "usb-c cable", price=3.5),
        codec.encode_intent_result(
            IntentResult("q-1", "product", 0.9, {"product": 0.9, "help": 0.1}, "m", "1", 5, 6)
        ),
        codec.encode_duplicate_result(
            DuplicateResult("p-1", "A", "B", 0.7, True, 0.5, "m", "1", None, 6)
        ),
        codec.encode_dead_letter(
            DeadLetter.for_record(
                ErrorCode.NOT_JSON,
                "r",
                source_topic="t",
                source_partition=0,
                source_offset=3,
                source_timestamp_ms=None,
                payload=b"\x00\xff",
                key=b"k",
                service="s",
                dlq_ts_ms=1,
            )
        ),
        orjson.dumps({"event_id": "x", "left": {"id": "A", "title": "t"}, "right": {}}),
    ]
    return out
