"""Side-by-side latency of a cpu artifact's variants: `python -m compile.measure --artifact DIR`.

Runs each variant on the same inputs, interleaved repeat by repeat so a busy shared machine
slows both alike, and prints the median and p90 ms per batch. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from streamer.model.manifest import read_manifest
from streamer.model.runner import load_runner
from streamer.model.tasks import Task


def parse_shape(text: str) -> tuple[int, int]:
    """`32x16` -> (32, 16)."""
    batch, _, seq_len = text.partition("x")
    return int(batch), int(seq_len)


def inputs(batch: int, seq_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-length rows of vocabulary ids: every token is paid for, as in a padded bucket."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 29000, (batch, seq_len), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    types = np.zeros_like(ids)
    types[:, seq_len // 2 :] = 1
    return ids, np.ones_like(ids), types


def main(argv: list[str] | None = None) -> int:
    """Measure and print a table plus one JSON line per (variant, shape)."""
    parser = argparse.ArgumentParser(prog="python -m compile.measure", description=__doc__)
    parser.add_argument("--artifact", type=Path, required=True, help="compiled cpu artifact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["1x16", "32x16", "8x128"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    variants = list(read_manifest(args.artifact)["variants"])
    runners = {v: load_runner(args.artifact, threads=args.threads, variant=v, force=True) for v in variants}  # fmt: skip
    rows = []
    for shape in map(parse_shape, args.shapes):
        feeds = inputs(*shape)
        task = Task.INTENT if shape[1] <= 32 else Task.DUPLICATE
        times: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(args.warmup + args.repeats):
            for v in variants:
                start = time.perf_counter()
                runners[v].run(task, *feeds)
                if i >= args.warmup:
                    times[v].append((time.perf_counter() - start) * 1000)
        for v in variants:
            ms = np.array(times[v])
            rows.append({
                "variant": v, "batch": shape[0], "seq_len": shape[1], "threads": args.threads,
                "median_ms": round(float(np.median(ms)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
                "items_per_s": round(shape[0] * 1000 / float(np.median(ms)), 1), "repeats": len(ms),
            })  # fmt: skip
    print(f"{'variant':8} {'shape':>8} {'median ms':>10} {'p90 ms':>8} {'items/s':>9}")
    for r in rows:
        print(f"{r['variant']:8} {str(r['batch']) + 'x' + str(r['seq_len']):>8} {r['median_ms']:>10} {r['p90_ms']:>8} {r['items_per_s']:>9}")  # fmt: skip
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
