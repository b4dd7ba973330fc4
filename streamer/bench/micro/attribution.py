"""Tail attribution microbenchmark: what the event loop pays per event for it.

    python -m streamer.bench.micro.attribution [--events 200000] [--repeat 5]

Runs `TailAttribution.batch_done` (the per-event split into segments, the running P99 and the
slow/sampled Prometheus counters) on batches of 1, 4 and 32 rows, and prints this thread's CPU
time per event (`time.thread_time`, best of `--repeat`). Every 50th batch runs ten times longer,
so the slow set is fed as under a real tail. It prints, never asserts: the numbers depend on the
machine.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from streamer.pipeline.attribution import BatchClock, TailAttribution
from streamer.pipeline.metrics import Metrics

BATCH_SIZES = (1, 4, 32)


def per_event_us(batch: int, events: int, repeat: int) -> float:
    """Best-of-`repeat` CPU microseconds per event of `batch_done` on `batch`-row batches."""
    rows = [
        SimpleNamespace(broker_s=0.0005, fetch_s=0.002, decode_s=0.0004, ready_at=9.999)
        for _ in range(batch)
    ]
    best = float("inf")
    for _ in range(repeat):
        m = Metrics()
        tail = TailAttribution(m.tail_segment_seconds, m.tail_events, m.tail_threshold, "intent")
        n = max(1, events // batch)
        start = time.thread_time()
        for i in range(n):
            run = 0.040 if i % 50 == 49 else 0.004
            clock = BatchClock(closed=10.0, started=10.0005, run_start=10.0007)
            clock.run_end = 10.0007 + run
            clock.back = clock.run_end + 0.0003
            tail.batch_done(rows, clock, clock.back + 0.001)
        best = min(best, (time.thread_time() - start) / (n * batch) * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    """Print a table of CPU microseconds per event by batch size."""
    parser = argparse.ArgumentParser(prog="python -m streamer.bench.micro.attribution")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print("| rows per batch | CPU µs per event |")
    print("|---|---|")
    for batch in BATCH_SIZES:
        print(f"| {batch} | {per_event_us(batch, args.events, args.repeat):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
