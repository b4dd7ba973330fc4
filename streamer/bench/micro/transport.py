"""Measure executor transport overhead: µs per batch, multi-process vs in-process.

The runner does no work (returns zeros), so what is left is the cost of the executor
itself: copying into shared memory, the wake-up and completion pipes, the event-loop
hop and the copy out (multi-process), or the thread hand-off (in-process).

    python -m streamer.bench.micro.transport [--batches 2000] [--uvloop]

Prints, per shape: one batch in flight at a time (round-trip latency) and `capacity`
batches in flight (pipelined cost per batch). Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from streamer.model.tasks import Task
from streamer.pipeline.executor import InProcessExecutor, MultiprocExecutor, RunnerSpec

SHAPES = ((32, 16), (8, 128))


class NullRunner:
    """A runner that returns zeros at once: isolates the executor's own cost."""

    def __init__(self, n_outputs: int) -> None:
        self.n_outputs = n_outputs

    def run(
        self,
        task: Task,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ) -> np.ndarray:
        """Zeros of the right shape."""
        return np.zeros((input_ids.shape[0], self.n_outputs), np.float32)


def make_null_runner(n_outputs: int = 8, threads: int | None = None) -> NullRunner:
    """Runner factory for `RunnerSpec("streamer.bench.micro.transport:make_null_runner")`."""
    return NullRunner(n_outputs)


async def _measure(
    executor: Any, batch: int, seq_len: int, n: int, in_flight: int
) -> dict[str, Any]:
    ids = np.ones((batch, seq_len), np.int32)
    for _ in range(min(200, n)):  # warm-up: page faults, first pipe wake-ups
        await executor.submit(Task.INTENT, ids, ids, ids)
    lat: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        await executor.submit(Task.INTENT, ids, ids, ids)
        lat.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    if in_flight == 1:
        for _ in range(n):
            await one()
    else:
        sem = asyncio.Semaphore(in_flight)

        async def bounded() -> None:
            async with sem:
                await one()

        await asyncio.gather(*(bounded() for _ in range(n)))
    wall = time.perf_counter() - t_start
    lat.sort()
    return {
        "us_per_batch": 1e6 * wall / n,
        "p50_us": 1e6 * statistics.median(lat),
        "p99_us": 1e6 * lat[int(0.99 * (len(lat) - 1))],
    }


async def bench(n: int, workers: int) -> list[dict[str, Any]]:
    """Run every (executor, shape, in-flight) combination; one row each."""
    spec = RunnerSpec("streamer.bench.micro.transport:make_null_runner", {"n_outputs": 8})
    rows = []
    inproc = InProcessExecutor(spec)
    multi = MultiprocExecutor(
        spec,
        workers=workers,
        threads_per_worker=1,
        slots_per_worker=2,
        max_batch=max(b for b, _ in SHAPES),
        max_seq_len=max(s for _, s in SHAPES),
        max_outputs=8,
    )
    await inproc.start()
    await multi.start()
    try:
        for batch, seq_len in SHAPES:
            for name, ex in (("inprocess", inproc), ("multiproc", multi)):
                for in_flight in sorted({1, ex.capacity}):
                    r = await _measure(ex, batch, seq_len, n, in_flight)
                    rows.append(
                        {
                            "executor": name,
                            "batch": batch,
                            "seq_len": seq_len,
                            "in_flight": in_flight,
                            **r,
                        }
                    )
    finally:
        await multi.close()
        await inproc.close()
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options (also usable as a `streamer` subcommand)."""
    parser.add_argument("--batches", type=int, default=2000, help="batches per measurement")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the results."""
    if args.uvloop:
        import uvloop

        rows = uvloop.run(bench(args.batches, args.workers))
    else:
        rows = asyncio.run(bench(args.batches, args.workers))
    loop = "uvloop" if args.uvloop else "asyncio"
    if args.json:
        for r in rows:
            print(json.dumps({**r, "loop": loop}))
        return 0
    header = f"transport overhead, zero-work runner, {loop}, {args.workers} worker(s)"
    print(f"{header}, {args.batches} batches each")
    print(
        f"{'executor':<10} {'B x L':>8} {'in flight':>9} {'us/batch':>9} {'p50 us':>8} {'p99 us':>8}"
    )
    for r in rows:
        print(
            f"{r['executor']:<10} {r['batch']:>3} x {r['seq_len']:<4} {r['in_flight']:>9} "
            f"{r['us_per_batch']:>9.1f} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m streamer.bench.micro.transport`."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
