"""`streamer replay`: re-score a time or offset range of the input topics, resumable, isolated.

    streamer replay --replay-id fix-1207 --from 2026-11-30T00:00Z --to 2026-12-01T00:00Z --dry-run
    streamer replay --replay-id fix-1207 --from 2026-11-30T00:00Z --to 2026-12-01T00:00Z \\
        --artifact models/minilm-multitask-v4 --output-topic-suffix .replay --rate 500

The plan (per partition: start, stop, offsets, where it resumes) is printed first; `--dry-run`
stops there. The replay reads with its own consumer group (or a checkpoint file), never the live
service's, and ends by itself when every partition's position reaches its stop offset. Run it
again with the same `--replay-id` to resume; several processes with one id split the partitions.
Exit codes: 0 done, 1 interrupted (resumable), 2 bad request (nothing consumed or written),
3 cannot start (broker, artifact), 4 done but part of the range was deleted by the broker before
it was read (retention; the summary lists the offsets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamer import logs
from streamer.config import Route, Settings, load_settings
from streamer.replay.checkpoint import Planned
from streamer.replay.job import ReplayRequest, plan_replay, source_topics
from streamer.replay.plan import PlanError
from streamer.replay.throttle import LiveBudget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer replay`."""
    parser.add_argument("--replay-id", required=True, help="names the replay; same id = resume")
    parser.add_argument("--routes", default="intent,duplicate", help="intent, duplicate or both")
    parser.add_argument("--from", dest="from_time", help="ISO-8601 time or epoch ms (inclusive)")
    parser.add_argument("--to", dest="to_time", help="ISO-8601 time or epoch ms (exclusive)")
    parser.add_argument("--from-offsets", help="topic:partition=offset,... or a JSON file")
    parser.add_argument("--to-offsets", help="topic:partition=offset,... (exclusive) or JSON")
    parser.add_argument("--partitions", help="only these partition numbers, e.g. 0,3")
    parser.add_argument("--artifact", type=Path, help="model to re-score with (default: shipped)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--output-topic-suffix", help="write to <live topic><suffix>, e.g. .replay")
    out.add_argument(
        "--output-topics",
        help="explicit intents,duplicates,dlq topic names (default: the live result topics)",
    )
    parser.add_argument("--rate", type=float, help="events per second at most (default: no cap)")
    parser.add_argument("--max-in-flight", type=int, help="records in flight at most")
    parser.add_argument(
        "--live-metrics", help="the live service's /metrics URL: back off while it is over budget"
    )
    parser.add_argument("--live-p99-ms", type=float, default=10.0, help="live intent P99 budget")
    parser.add_argument("--live-max-lag", type=int, default=1000, help="live lag budget (records)")
    parser.add_argument(
        "--nice",
        type=int,
        default=19,
        help="lower the CPU priority of the replay and its workers by this much (default 19: on "
        "cores shared with the live service the kernel gives the live worker the CPU first; "
        "0: same priority). Costs nothing on idle cores",
    )
    parser.add_argument("--checkpoint", type=Path, help="progress in this JSON file, not Kafka")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--json", action="store_true", help="plan and summary as JSON lines")
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--config", help="TOML settings file (topic names, security)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics (0: off)")
    parser.add_argument("--log-level", default="WARNING")


def build_settings(args: argparse.Namespace) -> Settings:
    """The service settings for the replay: routes, output topics, resources."""
    base = load_settings(
        args.config, bootstrap_servers=args.bootstrap_servers, routes=args.routes,
        workers=args.workers, threads_per_worker=args.threads_per_worker,
        metrics_port=args.metrics_port, log_level=args.log_level,
    )  # fmt: skip
    update: dict[str, Any] = {}
    if args.output_topic_suffix:
        suffix = args.output_topic_suffix
        update = {
            "topic_intents": base.topic_intents + suffix,
            "topic_duplicates": base.topic_duplicates + suffix,
            "topic_dlq": base.topic_dlq + suffix,
        }
    elif args.output_topics:
        names = [n.strip() for n in args.output_topics.split(",")]
        if len(names) != 3 or not all(names):
            raise PlanError("--output-topics needs three names: intents,duplicates,dlq")
        update = dict(zip(("topic_intents", "topic_duplicates", "topic_dlq"), names, strict=True))
    return base.model_copy(update=update)


def request_from(args: argparse.Namespace) -> ReplayRequest:
    """The replay request the flags describe."""
    return ReplayRequest(
        replay_id=args.replay_id,
        from_time=args.from_time,
        to_time=args.to_time,
        from_offsets=args.from_offsets,
        to_offsets=args.to_offsets,
        partitions=args.partitions,
        checkpoint=args.checkpoint,
        rate=args.rate,
        max_in_flight=args.max_in_flight,
        live_metrics=args.live_metrics,
        live_budget=LiveBudget(p99_s=args.live_p99_ms / 1000.0, max_lag=args.live_max_lag),
    )


def print_plan(planned: Planned, settings: Settings, rate: float | None, as_json: bool) -> None:
    """The plan, per partition, with totals and an estimated duration at the rate."""
    rows = planned.rows()
    remaining = sum(r["remaining"] for r in rows)
    eta = remaining / rate if rate else None
    if as_json:
        print(json.dumps({"plan": rows, "remaining": remaining, "resumed": planned.resumed,
                          "estimated_seconds": eta, "outputs": _outputs(settings)}))  # fmt: skip
        return
    from rich.console import Console
    from rich.table import Table

    routes = source_topics(settings)
    title = "replay plan" + (" (resuming from the checkpoint)" if planned.resumed else "")
    table = Table(title=title)
    for col in ("partition", "route", "start", "stop", "offsets", "resume at", "remaining"):
        table.add_column(col, justify="right")
    for r in rows:
        topic = r["partition"].rpartition(":")[0]
        table.add_row(
            r["partition"], str(routes.get(topic, "")), str(r["start"]), str(r["stop"]),
            str(r["offsets"]), str(r["resume_at"]), str(r["remaining"]),
        )  # fmt: skip
    console = Console(stderr=False)
    console.print(table)
    when = f", about {eta:.0f} s at {rate:g}/s" if eta is not None else " (no --rate: no estimate)"
    console.print(f"{remaining} offsets to replay{when}; results to {_outputs(settings)}")


def _outputs(settings: Settings) -> dict[str, str]:
    out = {"dlq": settings.topic_dlq}
    if Route.INTENT in settings.routes:
        out["intent"] = settings.topic_intents
    if Route.DUPLICATE in settings.routes:
        out["duplicate"] = settings.topic_duplicates
    return out


async def _progress(as_json: bool, planned: Planned) -> Any:
    """A progress bar per route over this process's records (done / total, rate, ETA)."""
    routes_of = {tp.topic for tp in planned.plan}

    async def show(service: Any, intake: Any) -> None:
        if as_json or not sys.stderr.isatty():
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        totals: dict[str, int] = {}
        for tp in planned.plan:
            totals[tp.topic] = totals.get(tp.topic, 0) + planned.remaining(tp)
        with Progress(
            "[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
            "{task.completed}/{task.total}", TimeRemainingColumn(),
        ) as bars:  # fmt: skip
            tasks = {t: bars.add_task(t, total=totals[t]) for t in sorted(routes_of)}
            registry = service.metrics.registry
            while True:
                for state in service.routes.values():
                    topic = state.handler.source_topic
                    done = registry.get_sample_value(
                        "streamer_records_in_total", {"route": state.name}
                    )
                    if topic in tasks:
                        bars.update(tasks[topic], completed=int(done or 0))
                await asyncio.sleep(0.5)

    return show


async def _run(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from streamer.app import resolve_artifact
    from streamer.kafka.clients import connection_failure
    from streamer.model.artifact import ArtifactError
    from streamer.model.manifest import read_manifest, verify_checksums
    from streamer.pipeline.executor_errors import WorkerStartError
    from streamer.pipeline.service import StartupError
    from streamer.replay.job import run_replay

    settings = build_settings(args)
    request = request_from(args)
    try:
        planned = await plan_replay(settings, request)
    except (KafkaError, OSError, TimeoutError) as exc:
        # Nothing consumed or written yet; say why as `streamer run` would, not a traceback.
        print(f"streamer replay: {await connection_failure(settings, exc)}", file=sys.stderr)
        return 3
    print_plan(planned, settings, request.rate, args.json)
    if args.dry_run:
        return 0
    try:
        artifact = resolve_artifact(args.artifact)
        verify_checksums(artifact, read_manifest(artifact))
    except (StartupError, ArtifactError) as exc:
        print(f"streamer replay: {exc}", file=sys.stderr)
        return 3
    if args.nice > 0:
        # Before the workers start: they inherit it (spawned from this process).
        os.nice(args.nice)
    try:
        outcome = await run_replay(
            settings, request, planned, artifact, on_progress=await _progress(args.json, planned)
        )
    except (StartupError, WorkerStartError) as exc:
        # Nothing was read or written: the plan is checkpointed only once everything is up.
        print(f"streamer replay: {exc}", file=sys.stderr)
        return 3
    summary = {"replay_id": args.replay_id, "nice": os.nice(0), **asdict(outcome)}
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(
            f"replay {args.replay_id}: {outcome.records_read} records read, {outcome.results} "
            f"results, {outcome.dead_letters} dead letters in {outcome.seconds:.1f} s "
            f"({outcome.records_read / max(outcome.seconds, 1e-9):.0f}/s) with {outcome.model}; "
            + _ending(outcome)
            + (
                f"; resumed: records answered between the last checkpoint and the interruption "
                f"are answered again (at most {outcome.redo_bound})"
                if outcome.resumed
                else ""
            )
        )
    return outcome.exit_code


def _ending(outcome: Any) -> str:
    """How the replay ended, in the words an operator acts on."""
    ending = "interrupted: run again to resume" if outcome.exit_code == 1 else "done"
    if outcome.offsets_deleted:
        ranges = ", ".join(
            f"{tp} {start}..{stop - 1}" for tp, spans in outcome.deleted.items()
            for start, stop in spans
        )  # fmt: skip
        ending += (
            f", but {outcome.offsets_deleted} offsets of the range were deleted by the broker "
            f"(retention) before they were read and are not answered: {ranges}"
        )
    return ending


def run(args: argparse.Namespace) -> int:
    """`streamer replay`."""
    try:
        logs.configure(args.log_level)
        import uvloop

        return uvloop.run(_run(args))
    except ValidationError as exc:
        for err in exc.errors(include_input=False):
            print(
                f"invalid setting {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr
            )
        return 2
    except PlanError as exc:
        print(f"streamer replay: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a checkpoint file of another replay
        print(f"streamer replay: {exc}", file=sys.stderr)
        return 2
