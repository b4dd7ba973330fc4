"""Model-only contender: the compiled model alone, per shape bucket, no Kafka. The ceiling.

Inputs are real tokenized queries/pairs from ../shared/data, padded to each bucket shape (a
static-shape model pays for the padded shape, so that is the honest cost of the bucket).
Prints one JSON object per bucket on stdout.

``--mix-threads`` adds the ceiling for the load the benchmark actually sends: the same event
sequence the load generator produces, batched by the service's own batch policy for the
artifact's target (full batches, as a saturated service forms them; pairs grouped by
length), run back to back; one row per thread count, tagged ``"kind": "mix"``. A bucket row says what
one shape costs; the mix row is what a Kafka contender's throughput should be held against.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import orjson

from streamer.bench.contenders.job import ModelJob


def measure(
    job: ModelJob,
    ids: np.ndarray,
    types: np.ndarray,
    lengths: list[int],
    budget_s: float,
    max_iters: int,
) -> dict[str, float]:
    """Median/P99 milliseconds per call and items/s for one (B, L) input."""
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    job.runner.run(job.handler.task, ids, mask, types)  # first call of a shape may allocate
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_iters and (len(times) < 3 or time.perf_counter() < deadline):
        t = time.perf_counter()
        job.runner.run(job.handler.task, ids, mask, types)
        times.append(time.perf_counter() - t)
    times.sort()
    med = statistics.median(times)
    return {
        "iters": len(times),
        "median_ms": med * 1000,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        "items_per_s": ids.shape[0] / med,
    }


def token_rows(job: ModelJob, route: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids of `n` real events of the route's kind."""
    from streamer.bench.events import EventFactory

    factory = EventFactory("query" if route == "intent" else "pair")
    events = [job.handler.decode(factory(f"m{i}", 0, i)) for i in range(n)]
    return [(ids, types) for ids, types, _ in job.handler.tokenize(events)]


def mix_batches(
    job: ModelJob, route: str, target: str, n_events: int
) -> list[tuple[np.ndarray, ...]]:
    """The bench's first n events as padded (ids, mask, types) batches, batched as the
    service's own policy for the target batches them (full batches, as under saturation)."""
    from streamer.app import batch_policies
    from streamer.config import load_settings
    from streamer.model.tasks import Task
    from streamer.pipeline.batcher import MicroBatcher
    from streamer.pipeline.routes import Row, pack_rows

    # batch_policies wants both tasks' buckets; only this route's policy is used.
    both = {Task.INTENT: job.buckets, Task.DUPLICATE: job.buckets}
    policy = batch_policies(target, load_settings(routes=route), both)[route]
    batcher: MicroBatcher[Row] = MicroBatcher(policy)
    shaped: list[tuple[np.ndarray, ...]] = []
    for i, (ids, types) in enumerate(token_rows(job, route, n_events)):
        row = Row(None, i, 0, None, None, 0, ids, types, False)  # type: ignore[arg-type]
        shaped += [
            pack_rows(b.items, b.padded_rows, b.seq_len) for b in batcher.add(row, len(ids), 0.0)
        ]
    while (last := batcher.flush(0.0)) is not None:
        shaped.append(pack_rows(last.items, last.padded_rows, last.seq_len))
    return shaped


def measure_mix(
    job: ModelJob, shaped: list[tuple[np.ndarray, ...]], n_events: int, budget_s: float
) -> dict[str, float]:
    """Items/s over the mix's batches run back to back (at least one pass)."""
    # Every distinct shape once before timing: ONNX Runtime plans (and allocates for) each
    # new (B, L) on its first run; a long-running service has paid that long ago.
    for ids, mask, types in {a.shape: (a, m, t) for a, m, t in shaped}.values():
        job.runner.run(job.handler.task, ids, mask, types)
    passes, start = 0, time.perf_counter()
    while passes < 1 or (time.perf_counter() - start < budget_s and passes < 20):
        for ids, mask, types in shaped:
            job.runner.run(job.handler.task, ids, mask, types)
        passes += 1
    elapsed = time.perf_counter() - start
    return {
        "events": n_events,
        "batches": len(shaped),
        "mean_rows": n_events / len(shaped),
        "passes": passes,
        "items_per_s": n_events * passes / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m streamer.bench.contenders.model_only --artifact DIR --route intent`."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifact", required=True)
    p.add_argument("--route", choices=["intent", "duplicate"], default="intent")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--force-artifact", action="store_true", help="load despite failed parity")
    p.add_argument("--batch-sizes", default="", help="comma list; default: the artifact's buckets")
    p.add_argument("--budget-s", type=float, default=2.0, help="time per bucket")
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--mix-threads", default="", help="comma list of thread counts for mix rows")
    p.add_argument("--mix-events", type=int, default=256, help="events in the mix")
    p.add_argument("--emulate", choices=["h200", "inf2"], default=None, help="EMULATED device")
    a = p.parse_args(argv)
    job = ModelJob.load(a.artifact, a.route, a.threads, a.force_artifact, a.emulate)
    sizes = [int(x) for x in a.batch_sizes.split(",") if x] or list(job.buckets.batch_sizes)
    rows = token_rows(job, a.route, max(sizes))
    for seq in job.buckets.seq_lens:
        for b in sizes:
            ids = np.zeros((b, seq), dtype=np.int32)
            types = np.zeros((b, seq), dtype=np.int32)
            lengths = []
            for i in range(b):
                row_ids, row_types = rows[i % len(rows)]
                n = min(len(row_ids), seq)
                ids[i, :n], types[i, :n] = row_ids[:n], row_types[:n]
                lengths.append(n)
            result = measure(job, ids, types, lengths, a.budget_s, a.max_iters)
            line = {"route": a.route, "batch": b, "seq_len": seq, **result}
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
            sys.stdout.flush()
    mix_threads = [int(x) for x in a.mix_threads.split(",") if x]
    if mix_threads:
        from streamer.model.manifest import read_manifest

        target = f"emulated-{a.emulate}" if a.emulate else read_manifest(a.artifact)["target"]
        shaped = mix_batches(job, a.route, target, a.mix_events)
    for threads in mix_threads:
        mix_job = ModelJob.load(a.artifact, a.route, threads, a.force_artifact, a.emulate)
        result = measure_mix(mix_job, shaped, a.mix_events, a.budget_s * 4)
        line = {"route": a.route, "kind": "mix", "threads": threads, **result}
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
        del mix_job
    return 0


if __name__ == "__main__":
    sys.exit(main())
