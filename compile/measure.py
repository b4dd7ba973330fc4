"""Side-by-side latency of a cpu artifact's variants: `python -m compile.measure --artifact DIR`.

Runs each variant on the same inputs, interleaved repeat by repeat so a busy shared machine
slows both alike, and prints the median and p90 ms per batch. `--baseline DIR` adds a second
artifact's variants to the same interleaving (before/after a compile change) and a column with
each variant's median relative to the baseline's same variant. A measurement, not a test.
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
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another compiled cpu artifact, timed alongside"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["1x16", "32x16", "8x128"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    artifacts = {"new": args.artifact}
    if args.baseline is not None:
        artifacts = {"base": args.baseline, "new": args.artifact}
    runners = {
        (label, v): load_runner(path, threads=args.threads, variant=v, force=True)
        for label, path in artifacts.items()
        for v in read_manifest(path)["variants"]
    }
    rows = []
    for shape in map(parse_shape, args.shapes):
        feeds = inputs(*shape)
        task = Task.INTENT if shape[1] <= 32 else Task.DUPLICATE
        times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
        for i in range(args.warmup + args.repeats):
            for key, runner in runners.items():
                start = time.perf_counter()
                runner.run(task, *feeds)
                if i >= args.warmup:
                    times[key].append((time.perf_counter() - start) * 1000)
        medians = {key: float(np.median(ms)) for key, ms in times.items()}
        for (label, v), ms in times.items():
            base = medians.get(("base", v))
            rows.append({
                "artifact": str(artifacts[label]), "label": label, "variant": v,
                "batch": shape[0], "seq_len": shape[1], "threads": args.threads,
                "median_ms": round(medians[label, v], 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
                "items_per_s": round(shape[0] * 1000 / medians[label, v], 1), "repeats": len(ms),
                "vs_base": round(medians[label, v] / base, 3) if base and label != "base" else None,
            })  # fmt: skip
    print(f"{'artifact':8} {'variant':8} {'shape':>8} {'median ms':>10} {'p90 ms':>8} {'items/s':>9} {'vs base':>8}")  # fmt: skip
    for r in rows:
        ratio = "" if r["vs_base"] is None else f"{r['vs_base']:.3f}"
        print(f"{r['label']:8} {r['variant']:8} {str(r['batch']) + 'x' + str(r['seq_len']):>8} {r['median_ms']:>10} {r['p90_ms']:>8} {r['items_per_s']:>9} {ratio:>8}")  # fmt: skip
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
