"""Live intent latency with and without a backfill beside it, in one run: `make bench-replay`.

    python -m streamer.bench.replay_ab [--rate 50] [--step-s 30] [--history 20000]

One local broker; the input topic holds `--history` past queries, which the live service's group
has already committed past (it is caught up). Phases, each `--step-s` long at the same offered
live rate: live alone, then per `--replay-nice` value live + `streamer replay --nice N` over the
history (with `--live-metrics` on the live service, so the replay backs off when the live P99 or
lag goes over budget) and live alone again (brackets the noise of a shared machine). Before the
phases, one unmeasured replay of the history warms the fresh broker (`--no-warm-up-replay`).
Reports the live P50/P99 per phase (scheduled time -> result appended) and the replay's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from streamer.bench.data import REPO_ROOT
from streamer.bench.stages import ready


async def _fill_history(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    from streamer.bench.events import EventFactory

    factory = EventFactory("query")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        now = int(time.time() * 1000) - 3_600_000
        futures = [
            await producer.send(topic, factory(f"h{i}", now + i, i), key=f"h{i}".encode())
            for i in range(n)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _catch_up(bootstrap: str, group: str, topic: str) -> None:
    """Commit the live group at the end of the topic: the history is already answered."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streamer.kafka.topics import describe_topics

    info = (await describe_topics(bootstrap, [topic]))[topic]
    tps = [TopicPartition(topic, p) for p in sorted(info.leaders)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


async def _live_step(bootstrap: str, topics: dict[str, str], rate: float, seconds: float) -> Any:
    from streamer.bench.events import EventFactory
    from streamer.bench.loadgen import run_load, schedule
    from streamer.bench.sink import LatencyRecorder, Sink

    sink = Sink(bootstrap, topics["intents"])
    await sink.start()
    scheduled: dict[str, int] = {}
    sink.recorder = LatencyRecorder(scheduled)
    load = await run_load(
        bootstrap, topics["queries"], schedule(rate, seconds), EventFactory("query"),
        offered_rate=rate, scheduled_ms=scheduled,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not sink.recorder.complete:
        await asyncio.sleep(0.2)
    report = sink.recorder.report()
    await sink.stop()
    return load, report


async def _run(a: argparse.Namespace) -> int:
    from streamer.kafka.local_broker import LocalKafka, free_port
    from streamer.kafka.topics import ensure_topics

    tag = f"rab{int(time.time())}"
    topics = {k: f"{tag}.{k}" for k in ("queries", "pairs", "intents", "duplicates", "dlq")}
    port = free_port()
    rows: list[dict[str, Any]] = []
    with LocalKafka() as kafka:
        bootstrap = kafka.bootstrap_servers
        await ensure_topics(bootstrap, dict.fromkeys(topics.values(), a.partitions))
        await ensure_topics(
            bootstrap,
            {f"{topics[k]}.replay": a.partitions for k in ("intents", "dlq", "duplicates")},
        )
        await _fill_history(bootstrap, topics["queries"], a.history)
        await _catch_up(bootstrap, "live", topics["queries"])
        env = dict(os.environ)
        env.update({f"STREAMER_TOPIC_{k.upper()}": v for k, v in topics.items()})
        env.update(
            STREAMER_BOOTSTRAP_SERVERS=bootstrap, STREAMER_ROUTES="intent", STREAMER_GROUP_ID="live",
            STREAMER_METRICS_PORT=str(port), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        )  # fmt: skip
        if a.artifact:
            env["STREAMER_ARTIFACT"] = str(a.artifact)
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        log = (a.out / "live.log").open("wb")
        live = subprocess.Popen([sys.executable, "-m", "streamer", "run"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not ready(port):
                if live.poll() is not None or time.monotonic() > deadline:
                    print(f"live service did not start; see {a.out / 'live.log'}", file=sys.stderr)
                    return 3
                await asyncio.sleep(0.5)
            await _live_step(bootstrap, topics, a.rate, 5.0)  # warm-up
            if a.warm_up_replay:
                # The first replay phase of every run cost the live route its P99 (47-88 ms, at
                # nice 0 and at nice 19 alike); after one unmeasured replay it cost far less. The
                # likeliest cause is the fresh broker JVM's warm-up (not profiled); a long-running
                # broker is warm, so the measured phases start from a warmed one.
                warm = _replay_argv(a, tag + "warm", port, nice=0)
                subprocess.run(warm, env=env, stdout=subprocess.DEVNULL, check=True,
                               stderr=(a.out / "replay-warm-up.log").open("wb"))  # fmt: skip
            phases: list[tuple[str, int | None]] = [("live alone", None)]
            for nice in a.replay_nice:
                phases += [(f"live + replay (nice {nice})", nice), ("live alone again", None)]
            for i, (phase, nice) in enumerate(phases):
                replay = None
                if nice is not None:
                    argv = _replay_argv(a, f"{tag}r{i}n{nice}", port, nice=nice)
                    replay = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                              stderr=(a.out / f"replay-{i}.log").open("wb"))  # fmt: skip
                    await asyncio.sleep(a.replay_head_start_s)
                _, report = await _live_step(bootstrap, topics, a.rate, a.step_s)
                row: dict[str, Any] = {
                    "phase": phase, "offered": a.rate, "results": report.unique,
                    "missing": report.missing, "p50_ms": report.broker.p50_ms,
                    "p99_ms": report.broker.p99_ms, "max_ms": report.broker.max_ms,
                }  # fmt: skip
                if replay is not None:
                    out, _ = replay.communicate(timeout=1800)
                    summary = json.loads(out.decode().splitlines()[-1])["summary"]
                    row["replay_records"] = summary["records_read"]
                    row["replay_seconds"] = round(summary["seconds"], 1)
                    row["replay_rate"] = round(summary["records_read"] / summary["seconds"], 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            live.terminate()
            live.wait(timeout=60)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("| phase | offered/s | results | missing | P50 ms | P99 ms | replay records/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['phase']} | {r['offered']:g} | {r['results']} | {r['missing']} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r.get('replay_rate', '')} |"
        )
    return 0


def _replay_argv(a: argparse.Namespace, replay_id: str, port: int, *, nice: int) -> list[str]:
    """`streamer replay` of the history beside the live service (backing off on its /metrics)."""
    argv = [
        sys.executable, "-m", "streamer", "replay", "--replay-id", replay_id,
        "--routes", "intent", "--output-topic-suffix", ".replay", "--json",
        "--live-metrics", f"http://127.0.0.1:{port}/metrics",
        "--live-p99-ms", str(a.live_p99_ms), "--nice", str(nice),
    ]  # fmt: skip
    if a.artifact:
        argv += ["--artifact", str(a.artifact)]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=50.0, help="live queries/s offered")
    p.add_argument("--step-s", type=float, default=30.0)
    p.add_argument("--history", type=int, default=20_000, help="past queries the replay answers")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--live-p99-ms",
        type=float,
        default=50.0,
        help="the live P99 the replay backs off for (50 ms: a 2-core box does not hold the "
        "service's 10 ms even alone, and the replay would then crawl at its floor; pass 10 "
        "where the live service holds it)",
    )
    p.add_argument("--replay-head-start-s", type=float, default=5.0)
    p.add_argument(
        "--replay-nice",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[0, 19],
        help="one replay phase per value of the replay's --nice, each followed by live alone "
        "(default 0,19: same priority as the live service, then the replay's default)",
    )
    p.add_argument(
        "--no-warm-up-replay",
        dest="warm_up_replay",
        action="store_false",
        help="skip the unmeasured replay that warms the fresh broker before the phases",
    )
    p.add_argument("--artifact", type=Path, help="model (default: the shipped one)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    a.out = a.out or REPO_ROOT / "bench-results" / time.strftime("replay-ab-%Y-%m-%dT%H%M%SZ")
    a.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(a))


if __name__ == "__main__":
    sys.exit(main())
