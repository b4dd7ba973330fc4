"""Result-codec microbenchmark: bytes and CPU per result record for each producer codec.

    python -m streamer.bench.micro.compression [--batches 1,4,32,256] [--records 20000]

What `STREAMER_PRODUCER_COMPRESSION` costs and saves, on the service's own intent results,
built into Kafka record batches by aiokafka's own batch builder (what the producer does) and
read back by its own reader (what a downstream aiokafka or the broker's validation does). A
batch holds what one produce request carries per partition: at linger 0 on a CPU target that is
one to a few results, on an accelerator at thousands per second tens to hundreds. It prints,
never asserts: the numbers depend on the machine. The paired service runs in BENCHMARKS.md
("Result codecs") measure the end-to-end side.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from streamer.pipeline.routes import TOP_K_SCORES
from streamer.records import codec
from streamer.records.types import IntentResult

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
LABELS = ("product", "media", "help", "order", "account", "other")


def _results(n: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of n intent results shaped like the service's: a random (uuid-like) event
    id, float32 softmax scores of the top labels at full precision, as routes.py writes them."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        logits = rng.normal(size=len(LABELS)).astype(np.float32) * 3
        probs = np.exp(logits) / np.exp(logits).sum()
        top = np.argsort(-probs)[:TOP_K_SCORES]
        result = IntentResult(
            str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i)), LABELS[int(top[0])],
            float(probs[top[0]]), {LABELS[int(j)]: float(probs[int(j)]) for j in top},
            "minilm-multitask", "4", 1_765_000_000_000 + i, 1_765_000_000_004 + i,
        )  # fmt: skip
        out.append((result.event_id.encode(), codec.encode_intent_result(result)))
    return out


def _headers() -> list[tuple[str, bytes]]:
    return [("model", b"minilm-multitask"), ("model_version", b"4")]


def measure(records: list[tuple[bytes, bytes]], codec_id: int, batch: int) -> dict[str, float]:
    """Build and read every record in batches of `batch`; bytes and µs per record."""
    built: list[bytes] = []
    t0 = time.process_time()
    for start in range(0, len(records), batch):
        builder = DefaultRecordBatchBuilder(
            magic=2, compression_type=codec_id, is_transactional=0, producer_id=-1,
            producer_epoch=-1, base_sequence=-1, batch_size=1 << 24,
        )  # fmt: skip
        for offset, (key, value) in enumerate(records[start : start + batch]):
            builder.append(offset, timestamp=1_765_000_000_000, key=key, value=value,
                           headers=_headers())  # fmt: skip
        built.append(bytes(builder.build()))
    t1 = time.process_time()
    n = 0
    for raw in built:
        n += sum(1 for _ in DefaultRecordBatch(raw))
    t2 = time.process_time()
    assert n == len(records)
    return {
        "bytes": sum(len(b) for b in built) / len(records),
        "write_us": (t1 - t0) / len(records) * 1e6,
        "read_us": (t2 - t1) / len(records) * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    """Print a table: codec x batch size -> bytes, write and read µs per record (best of 3)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,4,32,256")
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    records = _results(args.records)
    raw = sum(len(k) + len(v) for k, v in records) / len(records)
    print(f"{len(records)} intent results, key + value {raw:.0f} bytes each, 2 headers")
    print("| batch | codec | bytes/record | vs none | write µs/record | read µs/record |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        base = None
        for name, codec_id in CODECS.items():
            runs = [measure(records, codec_id, batch) for _ in range(args.repeat)]
            best = {k: min(r[k] for r in runs) for k in runs[0]}
            base = best["bytes"] if base is None else base
            print(
                f"| {batch} | {name} | {best['bytes']:.0f} | {best['bytes'] / base:.0%} | "
                f"{best['write_us']:.2f} | {best['read_us']:.2f} |"
            )


if __name__ == "__main__":
    main()
