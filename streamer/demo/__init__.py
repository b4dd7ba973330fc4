"""Run the whole job on this machine: Kafka, model, topics, the service under real load, a summary.

`make demo` calls this. It starts the local Apache Kafka (unless KAFKA_BOOTSTRAP_SERVERS is
set), takes the trained model shipped in models/ (compiled for the cpu target on first use),
sizes the offered load to this machine (`sizing`), creates fresh topics, runs `streamer run` as
one process per route, offers real queries and product pairs (../shared/data, else the bundled
sample) with a share of malformed records for the given duration, prints events in / results
out / DLQ / TPS / P50 / P99 per route, then a few answers read back from the result topics
(`examples`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any


async def _demo(args: argparse.Namespace, bootstrap: str) -> int:
    from rich.console import Console
    from rich.table import Table

    from streamer.app import resolve_artifact
    from streamer.bench.events import EventFactory
    from streamer.bench.loadgen import run_load, schedule
    from streamer.bench.sink import LatencyRecorder, Sink
    from streamer.demo.sizing import choose_rates, measure_ceilings
    from streamer.kafka.topics import ensure_topics
    from streamer.records.samples import BAD_RECORDS

    console = Console(width=max(Console().width, 132))
    artifact = resolve_artifact(args.artifact)
    if args.query_rate is None or args.pair_rate is None:
        console.print("timing the model on this machine to size the load ...")
        ceilings = measure_ceilings(artifact)
        query_rate, pair_rate, why = choose_rates(ceilings, args.load_fraction)
        args.query_rate = args.query_rate or query_rate
        args.pair_rate = args.pair_rate or pair_rate
        console.print(f"serving {artifact.name} {ceilings.variant}: {ceilings.selection}")
        console.print(f"offered load: {why}")
    tag = uuid.uuid4().hex[:6]
    topics = {
        "queries": f"demo-{tag}.search.queries.v1",
        "pairs": f"demo-{tag}.search.product-pairs.v1",
        "intents": f"demo-{tag}.search.query-intents.v1",
        "duplicates": f"demo-{tag}.search.product-duplicates.v1",
        "dlq": f"demo-{tag}.search.streamer.dlq.v1",
    }
    await ensure_topics(bootstrap, {name: args.partitions for name in topics.values()})
    env = dict(os.environ)
    env.update(
        {
            "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMER_ARTIFACT": str(artifact),
            **{f"STREAMER_TOPIC_{k.upper()}": v for k, v in topics.items()},
        }
    )
    # One service process per route, as deployed: on a CPU a pair batch runs 100+ ms and in a
    # shared worker it would sit in front of the intent batches (latency-first route).
    services: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
    for offset, route in enumerate(("intent", "duplicate")):
        port = args.metrics_port + offset
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamer-demo-{tag}-{route}.log"
        path_env = env | {
            "STREAMER_ROUTES": route,
            "STREAMER_GROUP_ID": f"demo-{tag}-{route}",
            "STREAMER_METRICS_PORT": str(port),
        }
        if route == "duplicate":
            # Two services share this machine: the pair service must not take every core, as
            # a pair-only service alone on its machine does (the intent P99 doubled when it did).
            path_env.setdefault(
                "STREAMER_THREADS_PER_WORKER", str(max(1, (os.cpu_count() or 2) // 2))
            )
            # Not niced: STREAMER_NICE=10 on this service did not lower the intent P99 here
            # (same-machine A/B, BENCHMARKS.md "The 10 ms path": 104/171 vs 100/142 ms).
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamer", "run"], env=path_env, stdout=log, stderr=log
            )
        services[route] = (proc, port, log_path)
    try:
        for route, (proc, port, log_path) in services.items():
            if not _wait_ready(port, proc, 120):
                console.print(f"[red]{route} service did not become ready; log: {log_path}[/red]")
                console.print(log_path.read_text()[-3000:])
                return 1
            console.print(
                f"{route} service up (artifact {artifact.name}); metrics: "
                f"http://127.0.0.1:{port}/metrics  log: {log_path}"
            )
        sinks = {
            "intent": Sink(bootstrap, topics["intents"]),
            "duplicate": Sink(bootstrap, topics["duplicates"]),
            "dlq": Sink(bootstrap, topics["dlq"]),
        }
        for sink in sinks.values():
            sink.recorder = LatencyRecorder(None)
            await sink.start(from_beginning=True)
        bad = [raw for _, _, raw in BAD_RECORDS]
        console.print(
            f"offering {args.query_rate}/s queries and {args.pair_rate}/s product pairs "
            f"for {args.duration:.0f} s ({args.bad_fraction:.0%} malformed) ..."
        )
        q_load, p_load = await asyncio.gather(
            run_load(bootstrap, topics["queries"], schedule(args.query_rate, args.duration),
                     EventFactory("query"), offered_rate=args.query_rate, bad_records=bad,
                     bad_fraction=args.bad_fraction, seed=1),
            run_load(bootstrap, topics["pairs"], schedule(args.pair_rate, args.duration),
                     EventFactory("pair"), offered_rate=args.pair_rate, bad_records=bad,
                     bad_fraction=args.bad_fraction, seed=2),
        )  # fmt: skip
        loads = {"intent": q_load, "duplicate": p_load}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(
                set(loads[p].scheduled_ms) <= sinks[p].recorder.seen.keys() for p in loads
            ) and len(sinks["dlq"].recorder.seen) + sinks["dlq"].recorder.unknown >= (
                q_load.bad + p_load.bad
            ):
                break
            await asyncio.sleep(0.2)
        dlq_count = sum(sinks["dlq"].recorder.seen.values()) + sinks["dlq"].recorder.unknown
        table = Table(title=f"streamer demo ({args.duration:.0f} s, artifact {artifact.name})")
        for col in ("route", "events in", "malformed", "results out", "missing", "duplicates",
                    "TPS", "P50 ms", "P99 ms", "P99.9 ms", "max ms"):  # fmt: skip
            table.add_column(col, justify="right")
        for route, load in loads.items():
            rep = sinks[route].recorder.report()
            missing = len(set(load.scheduled_ms) - sinks[route].recorder.seen.keys())
            table.add_row(
                route, str(load.sent), str(load.bad), str(rep.received), str(missing),
                str(rep.duplicates), f"{rep.unique / args.duration:.0f}",
                f"{rep.observed.p50_ms:.1f}", f"{rep.observed.p99_ms:.1f}",
                f"{rep.observed.p999_ms:.1f}", f"{rep.observed.max_ms:.1f}",
            )  # fmt: skip
        console.print(table)
        console.print(
            f"DLQ records: {dlq_count} (malformed offered: {q_load.bad + p_load.bad}); "
            "latency = scheduled send time -> result seen by a downstream consumer"
        )
        for sink in sinks.values():
            await sink.stop()
        await show_examples(console, bootstrap, topics)
        return 0
    finally:
        for proc, _, _ in services.values():
            proc.send_signal(signal.SIGTERM)
        for route, (proc, _, _) in services.items():
            try:
                print(f"{route} service drained and exited with code {proc.wait(timeout=40)}")
            except subprocess.TimeoutExpired:
                proc.kill()


async def show_examples(console: Any, bootstrap: str, topics: dict[str, str]) -> None:
    """A few real queries with their intent and a few pairs with their score, read back."""
    from rich.table import Table

    from streamer.demo.examples import pick_intents, pick_pairs, read_topic

    intents = pick_intents(
        await read_topic(bootstrap, topics["intents"]),
        await read_topic(bootstrap, topics["queries"]),
    )
    pairs = pick_pairs(
        await read_topic(bootstrap, topics["duplicates"]),
        await read_topic(bootstrap, topics["pairs"]),
    )
    table = Table(title=f"some answers, read back from {topics['intents']}")
    for col in ("query", "intent", "confidence"):
        table.add_column(col)
    for ex in intents:
        table.add_row(ex.query, ex.intent, f"{ex.confidence:.2f}")
    console.print(table)
    table = Table(title=f"some answers, read back from {topics['duplicates']}")
    for col in ("left product", "right product", "score", "decision"):
        table.add_column(col)
    for px in pairs:
        table.add_row(
            px.left[:60], px.right[:60], f"{px.score:.3f}",
            "duplicate" if px.is_duplicate else "distinct",
        )  # fmt: skip
    console.print(table)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll the service's /readyz until it answers 200, it exits, or the timeout passes."""
    from streamer.bench.stages import ready

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if ready(port):
            return True
        time.sleep(0.3)
    return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer demo`."""
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument(
        "--artifact", type=Path, default=None, help="model to serve (default: the shipped one)"
    )
    parser.add_argument(
        "--query-rate", type=float, default=None, help="queries per second (default: sized)"
    )
    parser.add_argument(
        "--pair-rate", type=float, default=None, help="product pairs per second (default: sized)"
    )
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.2,
        help="share of the model-only ceiling to offer when a rate is not given",
    )
    parser.add_argument("--bad-fraction", type=float, default=0.01)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--metrics-port", type=int, default=9102, help="intent service; duplicates use the next"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo end to end (`streamer demo`)."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        return asyncio.run(_demo(args, bootstrap))
    from streamer.kafka.local_broker import LocalKafka

    print("starting the local Apache Kafka ...", flush=True)
    with LocalKafka() as kafka:
        print(f"Kafka {kafka.version} at {kafka.bootstrap_servers}", flush=True)
        return asyncio.run(_demo(args, kafka.bootstrap_servers))
