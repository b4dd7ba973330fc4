"""Coverage-guided fuzzing of the record decoders with atheris (libFuzzer for Python).

    python -m tests.fuzz.fuzz_codec -runs=1000000            # `make fuzz` (FUZZ_RUNS=...)
    python -m tests.fuzz.fuzz_codec -runs=20000 -seed=1      # the short pass CI runs

Every input goes through all five decoders and the oracle (tests/fuzz/oracle.py): only
DecodeError may escape, and the codec must agree with the JSON Schemas. The codec is
instrumented for coverage; the seed corpus is the good and bad sample records plus encoded
results and a dead letter, and a dictionary of the records' field names and JSON tokens helps
libFuzzer reach the field checks. Any other libFuzzer flag works (-max_total_time=, -jobs=, a
corpus directory to keep what it found). A failing input is written to
`-artifact_prefix` (default: the current directory) as crash-<sha1>.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["streamer.records"]):
    from streamer.records import codec  # noqa: F401  (instrumented for coverage)
    from tests.fuzz.oracle import check, seeds

DICTIONARY_TOKENS = [
    *(
        f'"{name}"'
        for name in (
            "event_id", "query", "ts_ms", "locale", "session_id", "left", "right", "id",
            "title", "brand", "product_type", "description", "price", "model_number", "schema",
            "intent", "confidence", "scores", "model", "model_version", "source_ts_ms",
            "processed_ts_ms", "truncated", "left_id", "right_id", "score", "is_duplicate",
            "threshold", "error_code", "reason", "source_topic", "source_partition",
            "source_offset", "source_timestamp_ms", "payload_b64", "payload_truncated",
            "key_b64", "service", "dlq_ts_ms", "search.query-intent.v1",
            "search.product-duplicate.v1", "search.streamer.dead-letter.v1", "MODEL_ERROR",
            "NOT_JSON",
        )
    ),
    "{", "}", "[", "]", ":", ",", "null", "true", "false", "-0", "1e308", "1e400", "NaN",
    "Infinity", "253402300799999", "253402300800000", "18446744073709551616", "5.0", "\\u0000",
    "\\ud800", "\\udc00", "\\ud83d\\ude00", "\\u3000", "\\u00a0", "\\u2028", "\\ufeff",
    "\ufeff", " ", "\\n", "\\t", "==", "QUJD",
]  # fmt: skip


def _dict_escape(token: str) -> str:
    """libFuzzer dictionary syntax: printable ASCII as is, quotes and backslashes and every
    other byte of the token's UTF-8 as \\xNN."""
    out = []
    for byte in token.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in '"\\' else f"\\x{byte:02x}")
    return "".join(out)


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry: raises (and so reports a crash) only on a broken contract."""
    check(data)


def main(argv: list[str]) -> None:
    """Write the seed corpus and dictionary to a temp dir, then hand over to libFuzzer."""
    work = Path(tempfile.mkdtemp(prefix="streamer-fuzz-"))
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    # The first corpus directory given (created if missing) gets the seeds; else a temp one.
    corpus = Path(dirs[0]) if dirs else work / "seeds"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(raw)
    dictionary = work / "json.dict"
    dictionary.write_text("".join(f'"{_dict_escape(tok)}"\n' for tok in DICTIONARY_TOKENS))
    args = [argv[0], f"-dict={dictionary}", *argv[1:]]
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=4096")
    if not dirs:
        args.append(str(corpus))
    print(f"fuzz: seeds and dictionary in {work}", file=sys.stderr, flush=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
