"""One replay: plan the ranges, then run the service's own parts over them until they are done.

The replay is the live service with three parts swapped (`streamer.app.assemble`): the bounded
source instead of the live intake, the replay's checkpoint instead of the live group's commits,
and replay headers on every record. Batching, workers, publishing, the DLQ and the drain are the
service's own, so a replayed record is answered exactly as a live one would be (with the model
the replay was given), throughput-first: intent batches as large and patient as pair batches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from streamer.config import Route, Settings
from streamer.replay.checkpoint import Checkpoint, FileCheckpoint, KafkaCheckpoint, Planned
from streamer.replay.plan import (
    TP,
    PlanError,
    check_offsets_known,
    parse_offsets,
    parse_partitions,
    parse_time,
    resolve,
)
from streamer.replay.throttle import LiveBudget, LivePriority, Throttle

log = logging.getLogger("streamer.replay")

# Throughput-first batching for both routes (a backfill has no per-record latency budget).
REPLAY_BATCH = {"cpu": 16, "accelerator": 128}
REPLAY_LINGER_MS = 50.0
REPLAY_P99_MS = 60_000.0
# The replay finished, but the broker deleted part of its range before it was read (the summary
# lists the offsets): not a success a batch job may report as complete.
EXIT_RANGE_DELETED = 4


@dataclass
class ReplayRequest:
    """What the operator asked for (`streamer replay` flags)."""

    replay_id: str
    from_time: str | None = None
    to_time: str | None = None
    from_offsets: str | None = None
    to_offsets: str | None = None
    partitions: str | None = None
    checkpoint: Path | None = None
    rate: float | None = None
    max_in_flight: int | None = None
    live_metrics: str | None = None
    live_budget: LiveBudget = field(default_factory=LiveBudget)


def source_topics(settings: Settings) -> dict[str, Route]:
    """The live source topic of each replayed route."""
    topics = {}
    if Route.INTENT in settings.routes:
        topics[settings.topic_queries] = Route.INTENT
    if Route.DUPLICATE in settings.routes:
        topics[settings.topic_pairs] = Route.DUPLICATE
    return topics


async def plan_replay(settings: Settings, request: ReplayRequest) -> Planned:
    """Resolve the request against the broker, or read the plan a previous run checkpointed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streamer.kafka.clients import client_kwargs

    if request.from_time and request.from_offsets:
        raise PlanError("give --from or --from-offsets, not both")
    if request.to_time and request.to_offsets:
        raise PlanError("give --to or --to-offsets, not both")
    from_ms = parse_time(request.from_time) if request.from_time else None
    to_ms = parse_time(request.to_time) if request.to_time else None
    if from_ms is not None and to_ms is not None and from_ms > to_ms:
        raise PlanError(f"--from ({request.from_time}) is after --to ({request.to_time})")
    from_offsets = parse_offsets(request.from_offsets) if request.from_offsets else None
    to_offsets = parse_offsets(request.to_offsets) if request.to_offsets else None
    wanted = parse_partitions(request.partitions)

    kwargs = client_kwargs(settings)
    checkpoint: Checkpoint = (
        FileCheckpoint(request.replay_id, request.checkpoint)
        if request.checkpoint is not None
        else KafkaCheckpoint(request.replay_id, kwargs)
    )
    topics = set(source_topics(settings))
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **kwargs)
    await consumer.start()
    try:
        existing = await consumer.topics()
        missing = sorted(topics - existing)
        if missing:
            raise PlanError(f"unknown topic(s) on {settings.bootstrap_servers}: {missing}")
        outputs = {settings.topic_dlq}
        outputs |= {settings.topic_intents} if Route.INTENT in settings.routes else set()
        outputs |= {settings.topic_duplicates} if Route.DUPLICATE in settings.routes else set()
        missing = sorted(outputs - existing)
        if missing:
            raise PlanError(
                f"output topic(s) missing on {settings.bootstrap_servers}: {missing} "
                "(create them first, e.g. `streamer topics create` with the same names)"
            )
        partitions = [
            TP(topic, p)
            for topic, numbers in sorted((await _partitions(kwargs, topics)).items())
            for p in numbers
            if wanted is None or p in wanted
        ]
        if not partitions:
            raise PlanError(f"no partition {sorted(wanted or ())} in {sorted(topics)}")
        check_offsets_known(from_offsets, partitions, "--from-offsets")
        check_offsets_known(to_offsets, partitions, "--to-offsets")
        stored, committed = await checkpoint.load(topics)
        if stored:
            return Planned(stored, committed, True, checkpoint)
        tps = {tp: TopicPartition(tp.topic, tp.partition) for tp in partitions}
        begin = await consumer.beginning_offsets(list(tps.values()))
        end = await consumer.end_offsets(list(tps.values()))

        async def at(ms: int | None) -> dict[TP, int | None] | None:
            if ms is None:
                return None
            found = await consumer.offsets_for_times({k: ms for k in tps.values()})
            return {
                tp: (o.offset if (o := found.get(k)) is not None else None) for tp, k in tps.items()
            }

        plan = resolve(
            partitions,
            {tp: begin[k] for tp, k in tps.items()},
            {tp: end[k] for tp, k in tps.items()},
            from_times=await at(from_ms),
            to_times=await at(to_ms),
            from_offsets=from_offsets,
            to_offsets=to_offsets,
        )
    finally:
        await consumer.stop()
    return Planned(plan, {tp: rng.start for tp, rng in plan.items()}, False, checkpoint)


async def _partitions(kwargs: dict[str, Any], topics: set[str]) -> dict[str, list[int]]:
    """Partition numbers of each topic (the admin client's metadata, authorised like the rest)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kwargs)
    await admin.start()
    try:
        described = await admin.describe_topics(sorted(topics))
    finally:
        await admin.close()
    return {d["topic"]: sorted(int(p["partition"]) for p in d["partitions"]) for d in described}


def replay_settings(settings: Settings, request: ReplayRequest, target: str) -> Settings:
    """The service's settings turned throughput-first, with the replay's in-flight bound."""
    accelerator = "cpu" if target == "cpu" else "accelerator"
    update: dict[str, Any] = {
        "intent_max_batch": settings.intent_max_batch or REPLAY_BATCH[accelerator],
        "intent_max_linger_ms": REPLAY_LINGER_MS,
        "duplicate_max_linger_ms": max(settings.duplicate_max_linger_ms, REPLAY_LINGER_MS),
        "p99_target_ms": REPLAY_P99_MS,
        "duplicate_p99_target_ms": REPLAY_P99_MS,
        "drain_timeout_s": max(settings.drain_timeout_s, 60.0),
        # The live service's static member id must not follow it into the replay's group.
        "group_instance_id": None,
    }
    if request.max_in_flight:
        # Little's law with the replay's generous budget: the bound is the in-flight count.
        rate = request.max_in_flight / (REPLAY_P99_MS / 1000.0 * 0.5)
        update |= {"intent_target_tps": rate, "duplicate_target_tps": rate}
    return settings.model_copy(update=update)


def headers_for(replay_id: str) -> Any:
    """replay-id and the source coordinates on every result and dead letter."""
    rid = replay_id.encode()

    def headers(tp: Any, offset: int) -> list[tuple[str, bytes]]:
        return [
            ("replay-id", rid),
            ("source-topic", str(tp.topic).encode()),
            ("source-partition", str(tp.partition).encode()),
            ("source-offset", str(offset).encode()),
        ]

    return headers


@dataclass
class Outcome:
    """What one replay process did."""

    exit_code: int
    seconds: float
    records_read: int
    results: int
    dead_letters: int
    model: str
    redo_bound: int
    resumed: bool
    offsets_deleted: int = 0
    deleted: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


async def run_replay(
    settings: Settings,
    request: ReplayRequest,
    planned: Planned,
    artifact: Path,
    *,
    on_progress: Any = None,
) -> Outcome:
    """Run the planned ranges through the service's parts until done (or a signal)."""
    from streamer.app import (
        assemble,
        batch_policies,
        build_executor,
        build_registry,
        served_model,
        target_rates,
    )
    from streamer.kafka.access import BrokerAccess
    from streamer.kafka.clients import make_consumer, make_producer
    from streamer.model.tokenize import Encoder
    from streamer.pipeline.routes import make_routes
    from streamer.replay.source import BoundedIntake

    model = served_model(settings, artifact)
    settings = replay_settings(settings, request, model.target)
    settings = settings.model_copy(update=target_rates(model.target, settings))
    checkpoint = planned.checkpoint
    # No silent offset reset: a range the broker deleted under the replay is counted as lost
    # (BoundedIntake.fetch_failed), never skipped unseen.
    consumer = make_consumer(settings, group_id=checkpoint.group, offset_reset="none")
    throttle = Throttle(request.rate)
    service = assemble(
        settings,
        make_routes(settings, model, Encoder.from_artifact(artifact)),
        build_executor(settings, artifact, model),
        batch_policies(model.target, settings, model.buckets),
        producer=make_producer(settings),
        consumer=consumer,
        intake_factory=partial(BoundedIntake, planned=planned, throttle=throttle),
        commit=checkpoint.commit,
        extra_headers=headers_for(request.replay_id),
        access=BrokerAccess(settings),
        registry=build_registry(settings),
    )
    intake = service.intake
    assert isinstance(intake, BoundedIntake)
    _replay_gauges(service.metrics.registry, request.replay_id, throttle, intake)
    started = time.monotonic()
    await service.start()
    service.install_signal_handlers()
    background = [asyncio.create_task(_observe_rate(service, throttle, intake))]
    if request.live_metrics:
        priority = LivePriority(request.live_metrics, throttle, request.live_budget)
        background.append(asyncio.create_task(priority.run(service.flags.stopping)))
    if on_progress is not None:
        background.append(asyncio.create_task(on_progress(service, intake)))
    try:
        code = await service.run()
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    registry = service.metrics.registry
    results = sum(
        registry.get_sample_value("streamer_results_out_total", {"route": r}) or 0.0
        for r in service.routes
    )
    dead = sum(
        s.value
        for family in registry.collect()
        if family.name == "streamer_dlq"
        for s in family.samples
        if s.name == "streamer_dlq_total"
    )
    in_flight = max(s.backpressure.high for s in service.routes.values())
    commit_window = (request.rate or 0) * settings.commit_interval_ms / 1000.0
    if code == 0 and intake.deleted:
        code = EXIT_RANGE_DELETED
    return Outcome(
        exit_code=code,
        seconds=time.monotonic() - started,
        records_read=intake.records_read,
        results=int(results),
        dead_letters=int(dead),
        model=f"{model.name}-{model.version} ({model.target})",
        redo_bound=in_flight + math.ceil(commit_window),
        resumed=intake.planned.resumed,
        offsets_deleted=intake.offsets_deleted,
        deleted={str(tp): ranges for tp, ranges in sorted(intake.deleted.items())},
    )


async def _observe_rate(service: Any, throttle: Throttle, intake: Any) -> None:
    """The replay's own recent throughput: the base the live priority scales when no --rate."""
    last, last_t = intake.records_read, time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        rate = (intake.records_read - last) / max(1e-6, now - last_t)
        throttle.observe(rate)
        last, last_t = intake.records_read, now


def _replay_gauges(registry: Any, replay_id: str, throttle: Throttle, intake: Any) -> None:
    """Replay metrics with a replay_id label beside the service's own (same /metrics)."""
    from prometheus_client import Gauge

    labels = {"replay_id": replay_id}
    Gauge("streamer_replay_info", "1 for a replay process.", ["replay_id"], registry=registry)\
        .labels(**labels).set(1)  # fmt: skip
    Gauge(
        "streamer_replay_records_read", "Records of the planned ranges read so far.",
        ["replay_id"], registry=registry,
    ).labels(**labels).set_function(lambda: intake.records_read)  # fmt: skip
    Gauge(
        "streamer_replay_rate_factor",
        "Share of the replay's rate allowed now (below 1 while the live service is over budget).",
        ["replay_id"], registry=registry,
    ).labels(**labels).set_function(lambda: throttle.factor)  # fmt: skip
    Gauge(
        "streamer_replay_offsets_deleted",
        "Offsets of the planned ranges the broker deleted before the replay read them.",
        ["replay_id"], registry=registry,
    ).labels(**labels).set_function(lambda: intake.offsets_deleted)  # fmt: skip
