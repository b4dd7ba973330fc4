"""The service's lifecycle: start the parts, run until a signal, drain, shut down.

The data path of one record runs through three parts, each its own module, all built and wired
in `streamer.app` (the composition root) and handed in here:

    intake.KafkaIntake   fetch (getmany) -> decode (bad -> DLQ) -> tokenize per fetched chunk
                         -> rows; pause/resume partitions by backpressure; rebalance
    batch_runner.BatchRunner   rows -> MicroBatcher per route -> executor.submit (shared-memory
                         workers) -> results; bisection of failed batches
    publisher.Publisher  results and dead letters -> producer (acks=all) -> ack -> offsets done
                         -> periodic commit of each partition's contiguous done prefix

This module only starts them (executor, Kafka clients, health endpoint), runs their loops,
reacts to signals (which only set flags, as uvicorn's handler does) and drains: first signal
stops fetching and waits for in-flight work up to the drain deadline; a second one abandons it
(uncommitted, so the next owner redoes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka.errors import KafkaError

from streamer.pipeline.batch_runner import BatchRunner
from streamer.pipeline.executor import Executor
from streamer.pipeline.intake import KafkaIntake
from streamer.pipeline.lag import GroupLagMonitor
from streamer.pipeline.metrics import HealthServer, Metrics
from streamer.pipeline.publisher import Publisher
from streamer.pipeline.state import Progress, RouteState, StopFlags
from streamer.records.registry import RegistryUnavailableError, SchemaRegistry

log = logging.getLogger("streamer.service")


class StartupError(RuntimeError):
    """The service cannot start: broker, topics or artifact missing. The message says which."""


class KafkaClients:
    """The service's producer and consumer, started and stopped together (clear errors).

    With an `access` probe (`streamer.kafka.access.BrokerAccess`; the composition root passes
    one, tests with fake clients do not) a failed start says why (TLS, SASL), start-up checks
    that `read_topics` may be read and `write_topics` written (ACLs), and `watch` keeps
    `broker_reachable` current for readiness. Error texts never carry a secret.
    """

    def __init__(
        self,
        producer: Any,
        consumer: Any,
        bootstrap_servers: str,
        *,
        access: Any = None,
        read_topics: set[str] | None = None,
        write_topics: set[str] | None = None,
        secrets: list[str] | None = None,
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self._bootstrap = bootstrap_servers
        self._access = access
        self._read = set(read_topics or ())
        self._write = set(write_topics or ())
        self._secrets = [s for s in (secrets or []) if s]
        self.broker_reachable = True

    def _safe(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def start(self, needed_topics: set[str]) -> None:
        """Connect both clients and check that every topic exists; StartupError says what not."""
        try:
            await asyncio.wait_for(self.producer.start(), timeout=30)
            await asyncio.wait_for(self.consumer.start(), timeout=30)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.stop()
            reason = await self._access.diagnose() if self._access is not None else None
            raise StartupError(
                self._safe(
                    f"cannot connect to Kafka at {self._bootstrap}: {reason or repr(exc)}"
                    + ("" if reason else " (is the broker up? `make kafka-up`)")
                )
            ) from None
        if self._access is not None:
            try:
                problems = await self._access.check(
                    self._read, self._write | needed_topics - self._read
                )
            except (TimeoutError, KafkaError, OSError, NotImplementedError) as exc:
                problems = [f"the topic and ACL check failed: {type(exc).__name__}"]
            if problems:
                await self.stop()
                raise StartupError(
                    self._safe(
                        f"Kafka at {self._bootstrap}: "
                        + "; ".join(problems)
                        + " (create topics with `streamer topics create`; ACLs: the service's "
                        "user needs READ on its input topics and group, WRITE on its result "
                        "and DLQ topics)"
                    )
                )
            return
        missing = sorted(needed_topics - await self.consumer.topics())
        if missing:
            await self.stop()
            raise StartupError(
                f"topics missing on {self._bootstrap}: {', '.join(missing)} "
                "(create them with `streamer topics create`)"
            )

    async def watch(self, stopping: asyncio.Event, interval_s: float = 2.0) -> None:
        """Keep `broker_reachable` current (a bounded ping every interval_s) until stopping."""
        if self._access is None:
            return
        while not stopping.is_set():
            reachable = await self._access.ping(timeout_s=max(1.0, 2 * interval_s))
            if reachable != self.broker_reachable:
                self.broker_reachable = reachable
                log.log(
                    logging.INFO if reachable else logging.WARNING,
                    "broker reachable" if reachable else "broker unreachable: not ready",
                    extra={"event": "broker", "reachable": reachable},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)

    async def stop(self) -> None:
        """Stop both clients (bounded; errors ignored: we are leaving)."""
        for client in (self.consumer, self.producer, self._access):
            if client is None:
                continue
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.close() if client is self._access else client.stop(), timeout=10
                )


class Service:
    """One instance: the parts of the data path, their loops, signals, drain and shutdown."""

    def __init__(
        self,
        *,
        routes: Mapping[str, RouteState],
        executor: Executor,
        clients: KafkaClients,
        intake: KafkaIntake,
        runner: BatchRunner,
        publisher: Publisher,
        metrics: Metrics,
        flags: StopFlags,
        progress: Progress,
        needed_topics: set[str],
        drain_timeout_s: float,
        unreadable_ready_s: float = 60.0,
        commit_interval_s: float,
        health: Callable[[Callable[[], bool], Callable[[], list[str]]], HealthServer] | None = None,
        public_settings: Mapping[str, Any] | None = None,
        lag_monitor: GroupLagMonitor | None = None,
        registry: SchemaRegistry | None = None,
        gc_freeze: bool = False,
    ) -> None:
        self.routes = routes
        self.registry = registry
        self.executor = executor
        self.clients = clients
        self.intake = intake
        self.runner = runner
        self.publisher = publisher
        self.metrics = metrics
        self.flags = flags
        self._progress = progress
        self._needed_topics = needed_topics
        self._drain_timeout_s = drain_timeout_s
        self._commit_interval_s = commit_interval_s
        self._make_health = health
        self._unreadable_ready_s = unreadable_ready_s
        self._health: HealthServer | None = None
        self._public_settings = dict(public_settings or {})
        self._lag_monitor = lag_monitor
        self._ready = False
        self._background: list[asyncio.Task[None]] = []
        self._gc_freeze = gc_freeze
        self._unwatch_gc: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        """Start executor, clients and HTTP endpoint; fail fast with a clear reason."""
        await self.executor.start()
        self._announce_model(self.executor.runner_info)
        try:
            await self.clients.start(self._needed_topics)
        except StartupError:
            await self.executor.close()
            raise
        try:
            if self.registry is not None:
                # Our result and dead-letter schemas, registered before anything is written.
                await self.registry.start()
            await self.intake.prepare()
        except RegistryUnavailableError as exc:
            await self.clients.stop()
            await self.executor.close()
            raise StartupError(str(exc)) from exc
        except BaseException:
            await self.clients.stop()
            await self.executor.close()
            raise
        self.intake.subscribe()
        if self._make_health is not None:
            self._health = self._make_health(self.is_ready, self.not_ready_reasons)
            await self._health.start()
        if self._gc_freeze:
            # What start-up allocated (model, tokenizer, clients, modules) lives as long as the
            # process: frozen, the collector's full passes stop rescanning it on the event loop.
            gc.collect()
            gc.freeze()
        self._unwatch_gc = self.metrics.watch_gc()
        self._ready = True
        log.info(
            "started",
            extra={
                "event": "started",
                "settings": self._public_settings,
                "routes": list(self.routes),
            },
        )

    def _announce_model(self, served: dict[str, str]) -> None:
        """One clear line: which variant serves here and why (a fallback is a warning)."""
        self.metrics.set_model(served)
        log.log(
            logging.WARNING if "missed" in served.get("selection", "") else logging.INFO,
            "serving %s-%s %s/%s: %s",
            served.get("model"), served.get("version"), served.get("target"),
            served.get("variant"), served.get("selection"),
            extra={"event": "model", "served": served},
        )  # fmt: skip

    def is_ready(self) -> bool:
        """Ready = consuming, not draining, the executor has live workers and the broker
        answers (`KafkaClients.watch`: unready while it is away, ready again once it is back)."""
        return (
            self._ready
            and not self.flags.stopping.is_set()
            and self.executor.live_workers() > 0
            and self.clients.broker_reachable
            # Schema Registry away: fetched records are held, not decoded (intake.resolve_schemas).
            and (self.registry is None or self.registry.available)
            # A partition held at a batch it cannot read, past the bound: an operator must act.
            and not self.intake.stalled_over(self._unreadable_ready_s)
        )

    def not_ready_reasons(self) -> list[str]:
        """What /readyz names when it answers 503 (the partitions held too long, if any)."""
        held = self.intake.stalled_over(self._unreadable_ready_s)
        reasons = [f"partition held at an unreadable batch: {name}" for name in held]
        if self.registry is not None and not self.registry.available:
            reasons.append("schema registry unavailable: fetched records held until it answers")
        return reasons

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT drains; a second one forces exit (uvicorn's convention)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal, sig)

    def handle_signal(self, sig: int) -> None:
        """Record the signal; the run loop does the work."""
        forced = self.flags.on_signal()
        if forced:
            log.warning("forced exit", extra={"event": "signal", "signal": int(sig)})
        else:
            log.info("draining", extra={"event": "signal", "signal": int(sig)})
        self.runner.wake()

    def request_stop(self) -> None:
        """Stop fetching and drain (idempotent)."""
        self.flags.request_stop()
        self.runner.wake()

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean drain)."""
        loops: list[Awaitable[None]] = [
            self.intake.fetch_loop(),
            self.runner.linger_ticker(),
            self.publisher.commit_loop(self._commit_interval_s),
            self.intake.lag_loop(),
            self._gauges_loop(),
            self.clients.watch(self.flags.stopping),
        ]
        if self._lag_monitor is not None:
            loops.append(self._lag_monitor.run())
        self._background = [asyncio.create_task(loop) for loop in loops]  # type: ignore[arg-type]
        forced = asyncio.create_task(self.flags.forced.wait())
        try:
            await self.flags.stopping.wait()
            drain = asyncio.create_task(self._drain(self._drain_timeout_s))
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            if self.flags.forced.is_set():
                # Abandon in-flight work (uncommitted, so the next owner redoes it); the drain
                # then ends at once, commits what is done, and shutdown still closes the
                # workers and their segments.
                self._cancel_work()
            drained = await drain
            if self.flags.forced.is_set():
                return 1
            return self.flags.exit_code or (0 if drained else 1)
        except asyncio.CancelledError:
            return 1
        finally:
            forced.cancel()
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, forced, return_exceptions=True)
            await self._shutdown()

    def _cancel_work(self) -> None:
        for task in self._background:
            task.cancel()
        for state in self.routes.values():
            for task in state.tasks:
                task.cancel()

    async def _drain(self, timeout_s: float) -> bool:
        """Flush batchers, wait for in-flight work up to the deadline, commit what is done."""
        deadline = time.monotonic() + timeout_s
        self.runner.flush_all(time.monotonic())
        tasks = [t for state in self.routes.values() for t in state.tasks]
        drained = True
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            drained = not pending
            for task in pending:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.publisher.commit(), timeout=max(1.0, deadline - time.monotonic())
            )
        held = self.intake.stalled_over(0.0)
        # Work in hand is done; a partition held at an unreadable batch is not, and the next
        # owner meets the same batch: say so instead of a plain "complete".
        log.log(
            logging.WARNING if held else logging.INFO,
            "drained",
            extra={"event": "drained", "complete": drained, "held_partitions": held},
        )
        return drained

    async def _gauges_loop(self) -> None:
        """Slow-moving gauges: worker restarts, ignored completions, the linger's inputs."""
        while not self.flags.stopping.is_set():
            await asyncio.sleep(1.0)
            self.metrics.worker_restarts.set(self.executor.restarts)
            self.metrics.ready.set(1 if self.is_ready() else 0)
            self.metrics.ignored_completions.set(self._progress.watermark.ignored)
            for state in self.routes.values():
                for stage, p99 in state.linger.snapshot().items():
                    self.metrics.linger_inputs.labels(state.name, stage).set(p99)

    async def _shutdown(self) -> None:
        self._ready = False
        self._unwatch_gc()
        if self._health is not None:
            await self._health.close()
        # Exactly-once: the drain committed what was released; whatever transaction is still
        # open is aborted (not left to its timeout, holding read_committed readers back).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.close(), timeout=max(1.0, self._drain_timeout_s))
        await self.clients.stop()
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await self.registry.close()
        await self.executor.close()
