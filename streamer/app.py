"""`streamer run`: serve query intents and product-duplicate scores from Kafka to Kafka.

This module is the composition root: it turns Settings and the model artifact into a running
`Service`, and is the only place that builds Kafka clients, metrics, the executor and the
pipeline's parts (intake, batch runner, publisher). Per target it decides the worker layout,
the batch sizes and the expected rates that size in-flight work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamer import logs
from streamer.config import Route, Settings, load_settings
from streamer.kafka.security import SecurityConfigError
from streamer.model.artifact import ModelMeta
from streamer.model.buckets import Buckets, choose_batch
from streamer.model.tasks import Task
from streamer.pipeline.backpressure import Backpressure
from streamer.pipeline.batcher import BatchPolicy, MicroBatcher, duplicate_policy, intent_policy
from streamer.pipeline.executor import Executor
from streamer.pipeline.intake import KafkaIntake
from streamer.pipeline.linger import LingerController
from streamer.pipeline.publisher import CommitFn, HeaderFn
from streamer.pipeline.routes import RouteHandler, make_routes
from streamer.pipeline.service import Service, StartupError
from streamer.pipeline.state import RouteState
from streamer.pipeline.tracing import BatchTracer
from streamer.records.registry import SchemaRegistry

log = logging.getLogger("streamer.app")

IMAGE_SCHEMAS = Path("/opt/streamer/schemas")
"""Where the container image keeps schemas/*.v1.json (the package is installed, not checked out)."""

# Expected peak rates per target, which size in-flight work by Little's law (unless set).
# cpu intents: what a 2-core machine sustains near its knee (BENCHMARKS.md). cpu pairs are sized
# for throughput, not their ~60/s knee: each pause/resume cycle of the consumer idles the worker,
# and a bound of 32 pairs gave 40 pairs/s where 200 gave 61/s at 62.5 offered (BENCHMARKS.md).
# Accelerators: the published 16,000 intents/s and 8,800 pairs/s (DESIGN.md section 1).
TARGET_TPS = {
    "cpu": {Route.INTENT: 400.0, Route.DUPLICATE: 400.0},
    "accelerator": {Route.INTENT: 16_000.0, Route.DUPLICATE: 8_800.0},
}


def worker_layout(
    target: str, settings: Settings
) -> tuple[int, int, Callable[[int], dict[str, str]] | None]:
    """(workers, threads per worker, extra env per worker) for a target: one worker per core.

    The executor sets the thread-count variables (OMP_NUM_THREADS, ...) from the threads.
    """
    cores = os.cpu_count() or 1
    if target == "cpu":
        # One core stays with the asyncio process (Kafka client, decode, tokenize).
        workers = settings.workers or max(1, cores - 1)
        # Its core is kept free of model threads only when latency matters (intent route).
        # Pairs alone are throughput-first and their event loop is light (60 pairs/s on 2
        # cores): there the workers' threads take every core (same-run A/B, BENCHMARKS.md).
        spare = cores - 1 if Route.INTENT in settings.routes else cores
        return workers, settings.threads_per_worker or max(1, spare // workers), None
    if target == "cuda":
        import torch

        workers = settings.workers or max(1, torch.cuda.device_count())
        return (
            workers,
            settings.threads_per_worker or 2,
            lambda i: {"CUDA_VISIBLE_DEVICES": str(i)},
        )
    if target.startswith("emulated-"):
        # One worker per emulated device; it sleeps, so one thread is plenty.
        return settings.workers or 1, settings.threads_per_worker or 1, None
    if target in ("neuron", "neuronx"):
        # One model copy per NeuronCore, as in the Amazon Search deployment. Where the process
        # was handed a set of cores (Kubernetes' Neuron device plugin sets
        # NEURON_RT_VISIBLE_CORES for aws.amazon.com/neuroncore), worker i takes the i-th.
        visible = neuron_cores(os.environ.get("NEURON_RT_VISIBLE_CORES", ""))
        workers = settings.workers or len(visible)
        if not workers:
            raise StartupError("target neuron needs --workers = number of NeuronCores to use")
        if visible and workers > len(visible):
            raise StartupError(
                f"{workers} workers but NEURON_RT_VISIBLE_CORES gives {len(visible)} NeuronCores"
            )
        core_ids = visible or list(range(workers))
        return (
            workers,
            settings.threads_per_worker or 1,
            lambda i: {"NEURON_RT_VISIBLE_CORES": str(core_ids[i])},
        )
    raise StartupError(f"unknown artifact target {target!r}")


def neuron_cores(spec: str) -> list[int]:
    """NeuronCore ids of a NEURON_RT_VISIBLE_CORES value: '4', '4-7', '0,2,5' or '' (none)."""
    cores: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise StartupError(
                f"NEURON_RT_VISIBLE_CORES={spec!r}: expected ids or ranges"
            ) from None
        cores.extend(range(first, last + 1))
    return cores


# Where the model runs under STREAMER_EXECUTOR=auto, by target; any other target (and every
# emulated device) gets a worker process per device core, as the design asks. cpu: in process
# (ONNX Runtime releases the GIL), measured on 2 cores with the broker and the load beside it:
# intent P99 16 / 25 / 55 ms at 50 / 100 / 200 per s against 23.5 / 87.5 / 98.5 with a worker
# process, CPU per event equal or lower; the worker's tail was waiting for the worker
# (BENCHMARKS.md "The 10 ms path"). The price: no crash isolation from the runner.
AUTO_EXECUTOR = {"cpu": "inprocess"}


def executor_kind(target: str, settings: Settings) -> str:
    """'multiproc' or 'inprocess': the setting, or under 'auto' the measured default."""
    if settings.executor != "auto":
        return settings.executor
    if settings.emulate:
        return "multiproc"
    return AUTO_EXECUTOR.get(target, "multiproc")


def build_service(settings: Settings) -> Service:
    """Everything `streamer run` needs, from settings and the artifact on disk."""
    from streamer.kafka.access import BrokerAccess
    from streamer.kafka.clients import (
        make_admin,
        make_consumer,
        make_lag_probe,
        make_producer,
        make_transactional_producer,
    )
    from streamer.model.tokenize import Encoder

    artifact = resolve_artifact(settings.artifact)
    model = served_model(settings, artifact)
    return assemble(
        settings.model_copy(update=target_rates(model.target, settings)),
        make_routes(settings, model, Encoder.from_artifact(artifact)),
        build_executor(settings, artifact, model),
        batch_policies(model.target, settings, model.buckets),
        producer=make_producer(settings),
        consumer=make_consumer(settings),
        transactional_producers=(
            (lambda tid: make_transactional_producer(settings, tid))
            if settings.delivery == "exactly-once"
            else None
        ),
        access=BrokerAccess(settings),
        lag_clients=(make_admin(settings), make_lag_probe(settings))
        if settings.group_lag_interval_s
        else None,
        registry=build_registry(settings),
    )


def build_registry(settings: Settings) -> SchemaRegistry | None:
    """The Schema Registry client when `schema_registry_url` is set (None: plain JSON).

    Our result schemas are registered for the enabled routes' result topics and the DLQ, under
    the configured subject naming strategy, when the service starts (`Service.start`).
    """
    if settings.schema_registry_url is None:
        return None
    try:
        from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
    except ImportError as exc:
        raise StartupError(
            f"schema_registry_url needs the registry extra (pip install 'streamer[registry]'): "
            f"{exc}"
        ) from exc

    from streamer.config import repo_root
    from streamer.records.registry import make_client_config
    from streamer.records.types import DUPLICATE_RESULT_SCHEMA, INTENT_RESULT_SCHEMA

    password = settings.schema_registry_password
    conf = make_client_config(
        settings.schema_registry_url,
        username=settings.schema_registry_username,
        password=password.get_secret_value() if password is not None else None,
        ca_file=settings.schema_registry_cafile,
        timeout_s=settings.schema_registry_timeout_s,
    )
    results = {}
    if Route.INTENT in settings.routes:
        results[settings.topic_intents] = INTENT_RESULT_SCHEMA
    if Route.DUPLICATE in settings.routes:
        results[settings.topic_duplicates] = DUPLICATE_RESULT_SCHEMA
    return SchemaRegistry(
        AsyncSchemaRegistryClient(conf),
        url=settings.schema_registry_url,
        strategy=settings.schema_registry_subject_strategy,
        result_topics=results,
        dlq_topic=settings.topic_dlq,
        # The checkout's schemas/, else where the image puts them (deploy/docker/Dockerfile).
        schemas_dir=settings.schema_registry_schemas_dir
        or next((d for d in (repo_root() / "schemas", IMAGE_SCHEMAS) if d.is_dir()), IMAGE_SCHEMAS),
    )


def served_model(settings: Settings, artifact: Path) -> ModelMeta:
    """What will serve: the artifact's variant, or the emulated device when asked for."""
    from streamer.model.manifest import served_meta

    if settings.emulate:
        from streamer.model.backend_emulated import emulated_meta

        return emulated_meta(artifact, settings.emulate)
    return served_meta(artifact, variant=settings.variant)


def build_executor(settings: Settings, artifact: Path, model: ModelMeta) -> Executor:
    """The workers for the artifact's target (or the in-process runner when asked for)."""
    from streamer.pipeline.executor import InProcessExecutor, MultiprocExecutor, RunnerSpec

    workers, threads, env = worker_layout(model.target, settings)
    if settings.emulate:
        spec = RunnerSpec(
            "streamer.model.backend_emulated:load_emulated_runner",
            {"artifact_dir": str(artifact), "profile": settings.emulate},
        )
    else:
        spec = RunnerSpec(
            "streamer.model.runner:load_runner",
            {
                "artifact_dir": str(artifact),
                "force": settings.force_artifact,
                "variant": settings.variant,
                "threads": threads,
            },
        )
    if executor_kind(model.target, settings) == "inprocess":
        return InProcessExecutor(spec)
    return MultiprocExecutor(
        spec,
        workers=workers,
        threads_per_worker=threads,
        slots_per_worker=settings.slots_per_worker,
        max_batch=max(b.max_batch for b in model.buckets.values()),
        max_seq_len=max(b.max_seq_len for b in model.buckets.values()),
        max_outputs=max(len(model.labels), 1),
        heartbeat_timeout_s=settings.worker_heartbeat_timeout_s,
        env_per_worker=env,
        reserve_intent_slot=len(settings.routes) > 1,
    )


def route_states(
    settings: Settings,
    handlers: Sequence[RouteHandler],
    policies: dict[str, BatchPolicy],
    executor_capacity: int,
) -> dict[str, RouteState]:
    """Per route: batcher, linger controller and the in-flight bound (Little's law)."""
    states: dict[str, RouteState] = {}
    for handler in handlers:
        intent = handler.route == Route.INTENT
        policy = policies[handler.route]
        p99_s = (settings.p99_target_ms if intent else settings.duplicate_p99_target_ms) / 1000.0
        tps = settings.intent_target_tps if intent else settings.duplicate_target_tps
        assert tps is not None, "target_rates() fills the expected rates"
        linger = LingerController(p99_s, max_linger_s=policy.max_linger_s)
        # Little's law sizes in-flight for the expected rate, with half the budget left for
        # fetch, produce and variance; never below what keeps every worker slot busy with a
        # full batch, or the device idles while Kafka holds the load.
        backpressure = Backpressure.for_budget(
            tps, p99_s * 0.5, floor=2 * policy.max_batch * max(1, executor_capacity)
        )
        states[handler.route] = RouteState(
            handler=handler,
            batcher=MicroBatcher(policy, linger=linger.linger),
            linger=linger,
            backpressure=backpressure,
            p99_target_s=p99_s,
        )
    return states


def assemble(
    settings: Settings,
    handlers: Sequence[RouteHandler],
    executor: Executor,
    policies: dict[str, BatchPolicy],
    *,
    producer: Any,
    consumer: Any,
    intake_factory: Callable[..., KafkaIntake] | None = None,
    commit: CommitFn | None = None,
    extra_headers: HeaderFn | None = None,
    lag_clients: tuple[Any, Any] | None = None,
    access: Any = None,
    transactional_producers: Callable[[str], Any] | None = None,
    tracer: BatchTracer | None = None,
    registry: SchemaRegistry | None = None,
) -> Service:
    """Wire the parts around the given clients and executor (tests pass their own).

    The live service takes the defaults. The replay tool hands in its bounded source
    (`intake_factory`, called like `KafkaIntake`), its checkpoint (`commit`) and its headers.
    `lag_clients` (admin, probe consumer) feed the group's committed-offset and time lag.
    `access` (`streamer.kafka.access.BrokerAccess`) explains connection failures, checks the
    topics' ACLs at start-up and tells readiness whether the broker answers.
    `transactional_producers` (transactional id -> producer) serves exactly-once delivery:
    one producer per input partition (`streamer.pipeline.exactly_once`).
    `registry` (`streamer.records.registry.SchemaRegistry`, `build_registry`) switches the
    routes, the intake and the dead letters to the Schema Registry wire format.
    `tracer` records a span per batch; by default the OTLP one when settings enable it
    (`build_tracer`).
    """
    from streamer.pipeline.batch_runner import BatchRunner
    from streamer.pipeline.metrics import HealthServer, Metrics
    from streamer.pipeline.publisher import Publisher
    from streamer.pipeline.service import KafkaClients
    from streamer.pipeline.state import Progress, StopFlags

    metrics = Metrics()
    flags = StopFlags()
    progress = Progress()
    routes = route_states(settings, handlers, policies, executor.capacity)
    publisher: Publisher
    eos = None
    commit_interval_s = settings.commit_interval_ms / 1000.0
    if settings.delivery == "exactly-once":
        from streamer.pipeline.exactly_once import TransactionalPublisher

        if transactional_producers is None or commit is not None:
            raise StartupError(
                "delivery exactly-once needs the live service's per-partition transactional "
                "producers (the replay delivers at-least-once)"
            )
        publisher = eos = TransactionalPublisher(
            transactional_producers, progress, metrics, flags, dlq_topic=settings.topic_dlq,
            group_id=settings.group_id, timeout_s=settings.transaction_timeout_ms / 1000.0,
            extra_headers=extra_headers, forward_headers=settings.forward_headers,
        )  # fmt: skip
        commit_interval_s = settings.transaction_interval_ms / 1000.0
    else:
        publisher = Publisher(
            producer, progress, metrics, flags, dlq_topic=settings.topic_dlq,
            commit=commit or consumer.commit, extra_headers=extra_headers,
            forward_headers=settings.forward_headers,
        )  # fmt: skip
    if registry is not None:
        for handler in handlers:  # decode framed inputs, frame results
            handler.registry = registry
        publisher.frame_dead_letter = registry.frame_dead_letter
    runner = BatchRunner(
        routes, executor, publisher, metrics, flags,
        dispatch_when_idle=settings.dispatch_when_idle,
        tracer=tracer or build_tracer(settings),
    )  # fmt: skip
    intake = (intake_factory or KafkaIntake)(
        consumer, routes, runner, publisher, progress, metrics, flags,
        max_poll_records=settings.max_poll_records,
        revoke_timeout_s=min(settings.drain_timeout_s, 5.0),
        unreadable_policy=settings.unreadable_batch_policy,
        unreadable_retry_s=settings.unreadable_retry_s,
    )  # fmt: skip
    if eos is not None:
        eos.bind(intake)
    needed = {h.source_topic for h in handlers} | {h.result_topic for h in handlers}
    health = None
    if settings.metrics_port:

        def health(
            ready: Callable[[], bool], why: Callable[[], list[str]] | None = None
        ) -> HealthServer:
            return HealthServer(
                metrics, ready, settings.metrics_host, settings.metrics_port, why_not=why
            )

    lag_monitor = None
    if lag_clients is not None:
        from streamer.pipeline.lag import GroupLagMonitor

        lag_monitor = GroupLagMonitor(
            *lag_clients, metrics, flags,
            group_id=settings.group_id,
            topics=[h.source_topic for h in handlers],
            interval_s=settings.group_lag_interval_s,
        )  # fmt: skip
    return Service(
        routes=routes,
        executor=executor,
        clients=KafkaClients(
            producer,
            consumer,
            settings.bootstrap_servers,
            access=access,
            read_topics={h.source_topic for h in handlers},
            write_topics={h.result_topic for h in handlers} | {settings.topic_dlq},
            secrets=settings.secrets(),
        ),
        intake=intake,
        runner=runner,
        publisher=publisher,
        metrics=metrics,
        flags=flags,
        progress=progress,
        needed_topics=needed | {settings.topic_dlq},
        drain_timeout_s=settings.drain_timeout_s,
        commit_interval_s=commit_interval_s,
        unreadable_ready_s=settings.unreadable_ready_s,
        health=health,
        public_settings=settings.public_dict(),
        lag_monitor=lag_monitor,
        registry=registry,
        gc_freeze=settings.gc_freeze,
    )


def build_tracer(settings: Settings) -> BatchTracer | None:
    """The OTLP batch tracer when `otel_enabled`; a missing `otel` extra stops the start-up
    with what to install, rather than serving without the spans that were asked for."""
    if not settings.otel_enabled:
        return None
    from streamer.pipeline.tracing import otlp_tracer

    try:
        return otlp_tracer()
    except ImportError as exc:
        raise StartupError(
            f"otel_enabled needs the otel extra (pip install 'streamer[otel]'): {exc}"
        ) from exc


def resolve_artifact(artifact: Path | None) -> Path:
    """The compiled artifact to serve: the given one, or the shipped model compiled for cpu.

    A trained artifact (no manifest.json, e.g. `models/<name>`) is compiled for the cpu target
    on first use and cached under artifacts/.
    """
    from streamer.model.artifact import ArtifactError
    from streamer.model.shipped import ensure_compiled, is_compiled

    try:
        if artifact is None:
            return ensure_compiled()
        if is_compiled(artifact):
            return Path(artifact)
        if (Path(artifact) / "config.json").is_file():
            return ensure_compiled(Path(artifact))
    except ArtifactError as exc:
        raise StartupError(str(exc)) from exc
    raise StartupError(
        f"{artifact} is neither a compiled artifact (manifest.json) nor a trained one "
        "(config.json); build one with `python -m compile --target cpu --artifact DIR`"
    )


def target_rates(target: str, settings: Settings) -> dict[str, float]:
    """Expected peak rates per route (Little's-law in-flight sizing) unless set explicitly."""
    rates = TARGET_TPS["cpu" if target == "cpu" else "accelerator"]
    return {
        "intent_target_tps": settings.intent_target_tps or rates[Route.INTENT],
        "duplicate_target_tps": settings.duplicate_target_tps or rates[Route.DUPLICATE],
    }


def batch_policies(
    target: str, settings: Settings, buckets: dict[Task, Buckets]
) -> dict[str, BatchPolicy]:
    """Per-route batch policies: the compiled buckets bound them, the target sets the sizes.

    On a 2-core CPU (ONNX int8) a 32x16 intent batch takes ~31 ms, three times the whole
    10 ms budget, while 4x16 takes ~5 ms: CPU defaults are small batches (DESIGN.md section 4).
    """
    cpu = target == "cpu"
    ib, db = buckets[Task.INTENT], buckets[Task.DUPLICATE]
    compiled_short = ib.seq_lens[0]  # the padded-token budget is sized on it, whatever runs
    if cpu:
        # ONNX Runtime runs any batch size: padding rows up to a bucket only pays off on
        # static-shape targets (CUDA graphs, Neuron), so on cpu every row count is a bucket.
        # Lengths too, for intents (one open batch whatever the length): a row's cost grows
        # with its padded length, and most queries are 6-12 tokens, under the 16 bucket.
        step = settings.cpu_intent_seq_step
        seq = (*range(step, ib.max_seq_len, step), ib.max_seq_len) if step else ib.seq_lens
        ib = Buckets(tuple(range(1, ib.max_batch + 1)), seq)
        db = Buckets(tuple(range(1, db.max_batch + 1)), db.seq_lens)
    intent_rows = min(settings.intent_max_batch or (4 if cpu else 32), ib.max_batch)
    dup_rows = min(settings.duplicate_max_batch or (8 if cpu else 128), db.max_batch)
    typical_pair_len = min(128, db.max_seq_len)
    return {
        "intent": intent_policy(
            max_batch=intent_rows,
            # A full batch of 16-token queries fits; one long query shrinks its batch instead
            # of making every row pay its length.
            max_padded_tokens=max(
                choose_batch(ib.batch_sizes, intent_rows) * compiled_short, ib.max_seq_len
            ),
            max_linger_s=settings.intent_max_linger_ms / 1000.0,
            seq_buckets=ib.seq_lens,
            batch_buckets=ib.batch_sizes,
        ),
        "duplicate": duplicate_policy(
            max_batch=dup_rows,
            # Long pairs are what costs: a batch of 256-token pairs stays as cheap as a full
            # batch of typical 128-token ones.
            max_padded_tokens=max(
                choose_batch(db.batch_sizes, dup_rows) * typical_pair_len, db.max_seq_len
            ),
            max_linger_s=settings.duplicate_max_linger_ms / 1000.0,
            seq_buckets=db.seq_lens,
            batch_buckets=db.batch_sizes,
            group_by_length=settings.duplicate_group_by_length,
        ),
    }


async def serve(settings: Settings) -> int:
    """Start the service, run until a signal, drain, and return the exit code."""
    service = build_service(settings)
    await service.start()
    service.install_signal_handlers()
    return await service.run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer run` (each overrides env and TOML)."""
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--bootstrap-servers")
    parser.add_argument(
        "--artifact",
        help="model to serve: a compiled artifact, or a trained one (compiled for cpu on first "
        "use); default: the model shipped in models/",
    )
    parser.add_argument(
        "--routes", "--paths", dest="routes", help="intent, duplicate or intent,duplicate"
    )
    parser.add_argument("--group-id")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--threads-per-worker", type=int)
    parser.add_argument("--executor", choices=["auto", "multiproc", "inprocess"])
    parser.add_argument("--p99-target-ms", type=float)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--log-level")


def run(args: argparse.Namespace) -> int:
    """Run the service (`streamer run`)."""
    flags = {
        k: getattr(args, k)
        for k in (
            "bootstrap_servers", "artifact", "routes", "group_id", "workers",
            "threads_per_worker", "executor", "p99_target_ms", "metrics_port", "log_level",
        )
    }  # fmt: skip
    try:
        settings = load_settings(args.config, **flags)
    except ValidationError as exc:
        # include_input=False: a rejected value may be a secret.
        for err in exc.errors(include_input=False):
            print(
                f"invalid setting {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr
            )
        return 2
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    if settings.nice:
        os.nice(settings.nice)  # before any worker starts: they inherit it
    try:
        import uvloop

        return uvloop.run(serve(settings))
    except (StartupError, SecurityConfigError) as exc:
        log.error("startup failed", extra={"event": "startup_failed", "reason": str(exc)})
        print(f"streamer: {exc}", file=sys.stderr)
        return 3
