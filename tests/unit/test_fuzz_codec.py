"""Hostile JSON, structure-aware: valid records of every kind, broken by hand-picked attacks.

Hypothesis builds JSON *text* (not Python objects, which could never hold a duplicate key, a
BOM, NaN or a lone surrogate) from a valid record of each of the five kinds and applies one to
four attacks: a field set to a hostile number or string token, a duplicated key (the last one
wins in both parsers), deep nesting around the 1,024 limit, a byte order mark or garbage around
the document, raw control characters, surrogates (escaped, raw, unpaired), and padding to
exactly one byte under, at and over the 512 KiB cap. The oracle (tests/fuzz/oracle.py) then
demands that only DecodeError escapes any decoder and that codec and JSON Schema agree.

The coverage-guided fuzzer over the same oracle is tests/fuzz/fuzz_codec.py (`make fuzz`);
its short pass runs here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.records.types import MAX_RECORD_BYTES
from tests.fuzz.oracle import DECODERS, OracleFailure, check, seeds

REPO = Path(__file__).resolve().parents[2]
HOSTILE = settings(
    deadline=None,
    max_examples=int(os.environ.get("STREAMER_FUZZ_EXAMPLES", "400")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Raw:
    """JSON text inserted as is (may be invalid JSON on purpose)."""

    text: str


@dataclass
class Obj:
    """A JSON object as an ordered list of items: keys may repeat."""

    items: list[tuple[str, Any]]


def dump(node: Any, sep: str = "") -> str:
    """JSON text of a tree of Raw / Obj / list / plain values."""
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Obj):
        inner = ",".join(f"{json.dumps(k)}{sep}:{sep}{dump(v, sep)}" for k, v in node.items)
        return "{" + inner + "}"
    if isinstance(node, list):
        return "[" + ",".join(dump(v, sep) for v in node) + "]"
    return json.dumps(node, ensure_ascii=False)


def to_obj(value: Any) -> Any:
    """A parsed record as an Obj tree (nested objects too)."""
    if isinstance(value, dict):
        return Obj([(k, to_obj(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [to_obj(v) for v in value]
    return value


def _accepted_by_some(doc: dict[str, Any]) -> bool:
    return any(check(orjson.dumps(doc)).values())


def _bases() -> list[dict[str, Any]]:
    out = []
    for raw in seeds():
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc:
            out.append(doc)
    return out


BASES = _bases()
# The five kinds' valid records, so each kind is attacked as often as the bad samples together.
VALID_BASES = [b for b in BASES if _accepted_by_some(b)]

NUMBER_TOKENS = [
    "1e400", "-1e400", "1e-400", "1" + "0" * 400, "-0", "0.0", "-0.0", "1E2", "1e+2", "5.0",
    "18446744073709551615", "18446744073709551616", "-9223372036854775809", "9007199254740993",
    "253402300799999", "253402300800000", "253402300799999.0", "253402300799999.5", "0.5",
    "1.0000000000000002", "0.9999999999999999999", "1e-7", "-1e-7", "1.000001",
    "NaN", "-NaN", "Infinity", "-Infinity", "01", "+1", ".5", "1.", "0x10", "1_000",
]  # fmt: skip
STRING_TOKENS = [
    '"\\ud800"', '"\\udc00"', '"x\\ud800y"', '"\\ud83d\\ude00"', '"\\ud83d"', '"\U0001f600"',
    '"\\u0000"', '"a\\u0000b"', '"\x01"', '"\t"', '"\x7f"', '"\\u001f"', '"\\u3000"',
    '"\\ufeff"', '"\ufeff"', '"\\u2028\\u2029"', '" \\n\\t "', '"\\""', '"\\\\"', '"\\x41"',
    '"\\u00"', '"QUJD"', '"QUJD="', '"QQ=="', '"QQ"', '"search.query-intent.v1"',
    '"search.streamer.dead-letter.v1"', '"NOT_JSON"', '"A.b_c:d/e-f"', '"' + "e" * 129 + '"',
]  # fmt: skip
OTHER_TOKENS = ["null", "true", "false", "[]", "{}", '{"id":"A","title":"t"}', "[1,", "", "nul"]
KNOWN_FIELDS = sorted({k for base in BASES for k in base} | {"id", "title", "price", "zz"})

_tokens = st.sampled_from(NUMBER_TOKENS + STRING_TOKENS + OTHER_TOKENS).map(Raw)
_plain = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)


@st.composite
def _deep(draw: st.DrawFn) -> Raw:
    depth = draw(st.sampled_from([2, 50, 900, 1023, 1024, 1025, 3000]))
    if draw(st.booleans()):
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


def _objects(node: Any, out: list[Obj]) -> list[Obj]:
    if isinstance(node, Obj):
        out.append(node)
        for _, v in node.items:
            _objects(v, out)
    elif isinstance(node, list):
        for v in node:
            _objects(v, out)
    return out


@st.composite
def hostile_records(draw: st.DrawFn) -> bytes:
    """A valid record of some kind with 1..4 attacks, as bytes."""
    root = to_obj(draw(st.sampled_from(VALID_BASES) | st.sampled_from(BASES)))
    prefix = suffix = ""
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(_objects(root, [])))
        attack = draw(
            st.sampled_from(["set", "set", "set", "duplicate", "delete", "deep", "frame"])
        )
        value: Any = draw(_tokens | _plain | _deep())
        if attack == "set" and target.items:
            i = draw(st.integers(0, len(target.items) - 1))
            target.items[i] = (target.items[i][0], value)
        elif attack == "duplicate" and target.items:
            key = draw(st.sampled_from([k for k, _ in target.items]))
            target.items.append((key, value))
        elif attack == "delete" and target.items:
            target.items.pop(draw(st.integers(0, len(target.items) - 1)))
        elif attack == "frame":
            prefix, suffix = draw(
                st.sampled_from(
                    [("\ufeff", ""), (" \n\t", " \r\n"), ("", "x"), ("[", "]"), ("", ","),
                     ("\x00", ""), ("", "\x00"), ("", "}")]
                )
            )  # fmt: skip
        else:
            target.items.append((draw(st.sampled_from(KNOWN_FIELDS)), value))
    text = prefix + dump(root, draw(st.sampled_from(["", " ", "\n"]))) + suffix
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        # Pad with an unknown field to one byte under, at or over a decoder's cap.
        cap = draw(st.sampled_from([MAX_RECORD_BYTES, 2 * MAX_RECORD_BYTES]))
        room = cap + draw(st.sampled_from([-1, 0, 1])) - len(raw) - len(',"zz_pad":""')
        if room >= 0 and raw.endswith(b"}") and raw.startswith(b"{") and len(raw) > 2:
            raw = raw[:-1] + b',"zz_pad":"' + b"x" * room + b'"}'
    return raw


@HOSTILE
@given(hostile_records())
def test_hostile_json_only_decode_error_and_schema_agreement(raw: bytes) -> None:
    check(raw)


# Fixed cases each attack class must get right (reached by the strategy above only at random).
def _record(kind: int, **changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASES[kind]))
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf" + orjson.dumps(BASES[0]),
        b'{"event_id":"a","query":"q","event_id":5}',
        b'{"event_id":5,"query":"q","event_id":"a"}',
        b'{"event_id":"a","query":"\\ud800"}',
        b'{"event_id":"a","query":"\xed\xa0\x80"}',
        b'{"event_id":"a","query":"q","ts_ms":1e400}',
        b'{"event_id":"a","query":"q","ts_ms":NaN}',
        b'{"event_id":"a","query":"q","ts_ms":18446744073709551616}',
        b'{"event_id":"a","query":"q","x":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"event_id":"a","query":"q","x":' + b"[" * 1030 + b"]" * 1030 + b"}",
        b'{"event_id":"a","query":"\x01"}',
        b'{"event_id":"a","query":"\\u0000"}',
        *(
            orjson.dumps(doc).replace(f'"{field}":'.encode(), f'"{field}":{value},"x":'.encode())
            for doc in VALID_BASES
            for field in ("processed_ts_ms", "source_offset", "source_timestamp_ms", "ts_ms")
            for value in ("18446744073709551615", "1e300", "-1", "5.5")
            if field in doc
        ),
    ],
    ids=lambda raw: raw[:40].decode("utf-8", "replace"),
)
def test_hostile_classes(raw: bytes) -> None:
    check(raw)


def test_the_cap_boundary_for_every_decoder() -> None:
    for _name, _decode, _schema, cap in DECODERS:
        for delta in (-1, 0, 1):
            base = b'{"event_id":"a","query":"q","zz_pad":""}'
            pad = cap + delta - len(base)
            check(base[:-2] + b"x" * pad + b'"}')


def test_oracle_catches_a_broken_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: a decoder that accepts too much, one that raises something else."""

    def lenient(raw: bytes) -> None:
        return None

    def crashing(raw: bytes) -> None:
        raise KeyError("query")

    for fake, message in ((lenient, "schema rejects"), (crashing, "raised KeyError")):
        patched = [(n, fake if n == "decode_query" else d, s, c) for n, d, s, c in DECODERS]
        monkeypatch.setattr("tests.fuzz.oracle.DECODERS", patched)
        with pytest.raises(OracleFailure, match=message):
            check(b'{"event_id":"a"}')


@pytest.mark.timeout(300)
def test_coverage_guided_fuzzer_short_pass(tmp_path: Path) -> None:
    """The atheris fuzzer, bounded: a fixed number of inputs from the seed corpus."""
    runs = int(os.environ.get("STREAMER_FUZZ_RUNS", "50000"))
    out = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_codec", f"-runs={runs}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Done {runs} runs" in out.stderr
    assert not list(tmp_path.glob("crash-*"))
