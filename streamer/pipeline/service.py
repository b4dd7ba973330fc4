"""The service: Kafka in, micro-batches to the executor, results out, offsets committed.

Data path of one record (one asyncio loop, no threads):

    fetch (getmany) -> decode (bad -> DLQ) -> tokenize per fetched chunk -> MicroBatcher
    -> executor.submit (shared-memory workers) -> results -> producer (acks=all) -> ack
    -> OffsetWatermark.done -> periodic commit of each partition's contiguous prefix

Backpressure counts records from fetch to ack; above the high mark the path's partitions are
paused (records wait in Kafka, not in our memory) and resumed below the low mark. The linger
of each batcher is recomputed from the measured stage latencies, so the batch waits exactly as
long as the P99 budget allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from streamer.config import Settings
from streamer.errors import DecodeError, ErrorCode
from streamer.pipeline.backpressure import Action, Backpressure, inflight_limit
from streamer.pipeline.batcher import Batch, BatchPolicy, MicroBatcher
from streamer.pipeline.executor_errors import ExecutorBrokenError, ExecutorClosedError
from streamer.pipeline.linger import LingerController
from streamer.pipeline.metrics import HealthServer, Metrics
from streamer.pipeline.offsets import OffsetWatermark
from streamer.pipeline.paths import PathHandler, Row, pack_batch
from streamer.records import codec
from streamer.records.types import DeadLetter, QueryEvent

log = logging.getLogger("streamer.service")

SERVICE_NAME = "streamer"
# Expected peak rates when settings leave them unset and the composition root did not resolve
# them per target (the published accelerator figures, DESIGN.md section 1).
DEFAULT_TARGET_TPS = {"intent": 16_000.0, "duplicate": 8_800.0}
PRODUCE_RETRY_BACKOFF_S = 0.2


class StartupError(RuntimeError):
    """The service cannot start: broker, topics or artifact missing. The message says which."""


@dataclass
class PathRuntime:
    """The per-path state the service drives: handler, batcher, linger and backpressure."""

    handler: PathHandler
    batcher: MicroBatcher[Row]
    linger: LingerController
    backpressure: Backpressure
    p99_target_s: float
    inflight_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    paused: set[TopicPartition] = field(default_factory=set)


class _RebalanceListener(ConsumerRebalanceListener):
    """Forwards aiokafka's rebalance callbacks to the service."""

    def __init__(self, service: Service) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._service.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._service.on_assigned(set(assigned))


class Service:
    """One service instance: a consumer, a producer, an executor and the per-path runtimes."""

    def __init__(
        self,
        settings: Settings,
        handlers: Sequence[PathHandler],
        executor: Any,
        policies: dict[str, BatchPolicy],
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.metrics = Metrics()
        self.watermark = OffsetWatermark()
        self.paths: dict[str, PathRuntime] = {}
        for handler in handlers:
            policy = policies[handler.name]
            p99_s = (
                settings.p99_target_ms
                if handler.name == "intent"
                else settings.duplicate_p99_target_ms
            ) / 1000.0
            tps = (
                settings.intent_target_tps
                if handler.name == "intent"
                else settings.duplicate_target_tps
            ) or DEFAULT_TARGET_TPS[handler.name]
            linger = LingerController(p99_s, max_linger_s=policy.max_linger_s)
            # Little's law sizes in-flight for the expected rate, with half the budget left for
            # fetch, produce and variance; never below what keeps every worker slot busy with a
            # full batch, or the device idles while Kafka holds the load.
            high = max(
                inflight_limit(tps, p99_s * 0.5),
                2 * policy.max_batch * max(1, executor.capacity),
            )
            self.paths[handler.name] = PathRuntime(
                handler=handler,
                batcher=MicroBatcher(policy, linger=linger.linger),
                linger=linger,
                backpressure=Backpressure(high=high, low=max(1, high // 2)),
                p99_target_s=p99_s,
            )
        self._by_topic = {rt.handler.source_topic: rt for rt in self.paths.values()}
        self._generation: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._health: HealthServer | None = None
        self._stopping = asyncio.Event()
        self._wake_ticker = asyncio.Event()
        self._ready = False
        self._signals = 0
        self._exit_code = 0
        self._running_batches = 0  # dispatched batches whose first model call has not returned
        self._background: list[asyncio.Task[None]] = []

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start executor, clients and HTTP endpoint; fail fast with a clear reason."""
        s = self.settings
        await self.executor.start()
        served = self.executor.runner_info
        self.metrics.set_model(served)
        # One clear line: which variant serves here and why (a fallback is a warning).
        log.log(
            logging.WARNING if "missed" in served.get("selection", "") else logging.INFO,
            "serving %s-%s %s/%s: %s",
            served.get("model"), served.get("version"), served.get("target"),
            served.get("variant"), served.get("selection"),
            extra={"event": "model", "served": served},
        )  # fmt: skip
        common = {"bootstrap_servers": s.bootstrap_servers, "client_id": s.client_id}
        common.update(s.kafka_security())
        self._producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=s.producer_idempotence,
            linger_ms=s.producer_linger_ms,
            request_timeout_ms=30_000,
            **common,
        )
        self._consumer = AIOKafkaConsumer(
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            fetch_min_bytes=1,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            isolation_level="read_committed",
            **common,
        )
        try:
            await asyncio.wait_for(self._producer.start(), timeout=30)
            await asyncio.wait_for(self._consumer.start(), timeout=30)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self._close_clients()
            await self.executor.close()
            raise StartupError(
                f"cannot reach Kafka at {s.bootstrap_servers}: {exc!r} "
                "(is the broker up? `make kafka-up`)"
            ) from exc
        await self._check_topics()
        self._consumer.subscribe(topics=sorted(self._by_topic), listener=_RebalanceListener(self))
        if s.metrics_port:
            self._health = HealthServer(self.metrics, self.is_ready, s.metrics_host, s.metrics_port)
            await self._health.start()
        self._ready = True
        log.info(
            "started",
            extra={"event": "started", "settings": s.public_dict(), "paths": list(self.paths)},
        )

    async def _check_topics(self) -> None:
        assert self._consumer is not None
        existing = await self._consumer.topics()
        needed = set(self._by_topic) | {rt.handler.result_topic for rt in self.paths.values()}
        needed.add(self.settings.topic_dlq)
        missing = sorted(needed - existing)
        if missing:
            await self._close_clients()
            await self.executor.close()
            raise StartupError(
                f"topics missing on {self.settings.bootstrap_servers}: {', '.join(missing)} "
                "(create them with `streamer topics create`)"
            )

    def is_ready(self) -> bool:
        """Ready = consuming, not draining, and the executor has live workers."""
        live = getattr(self.executor, "live_workers", None)
        return self._ready and not self._stopping.is_set() and (live is None or live() > 0)

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT drains; a second one forces exit (uvicorn's convention)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("draining", extra={"event": "signal", "signal": int(sig)})
            self.request_stop()
        else:
            # Forced: abandon in-flight work (uncommitted, so the next owner redoes it) and
            # go straight to shutdown, which still closes the workers and their segments.
            log.warning("forced exit", extra={"event": "signal", "signal": int(sig)})
            self.request_stop()
            for task in self._background:
                task.cancel()
            for rt in self.paths.values():
                for task in rt.inflight_tasks:
                    task.cancel()

    def request_stop(self) -> None:
        """Stop fetching and drain (idempotent)."""
        self._stopping.set()
        self._wake_ticker.set()

    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean drain)."""
        self._background = [
            asyncio.create_task(self._fetch_loop(), name="fetch"),
            asyncio.create_task(self._linger_ticker(), name="linger"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._gauges_loop(), name="gauges"),
        ]
        try:
            await self._stopping.wait()
            drained = await self._drain(self.settings.drain_timeout_s)
            return self._exit_code or (0 if drained else 1)
        except asyncio.CancelledError:
            return 1
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._shutdown()

    async def _drain(self, timeout_s: float) -> bool:
        """Flush batchers, wait for in-flight work up to the deadline, commit what is done."""
        deadline = time.monotonic() + timeout_s
        now = time.monotonic()
        for rt in self.paths.values():
            self._flush(rt, now)
        tasks = [t for rt in self.paths.values() for t in rt.inflight_tasks]
        drained = True
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            drained = not pending and self._signals < 2
            for task in pending:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._commit(), timeout=max(1.0, deadline - time.monotonic()))
        log.info("drained", extra={"event": "drained", "complete": drained})
        return drained

    async def _shutdown(self) -> None:
        self._ready = False
        if self._health is not None:
            await self._health.close()
        await self._close_clients()
        await self.executor.close()

    async def _close_clients(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), timeout=10)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), timeout=10)

    # ----------------------------------------------------------------- rebalance
    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """New partitions: bump their generation; pause them if their path is paused."""
        for tp in assigned:
            self._generation[tp] = self._generation.get(tp, 0) + 1
            rt = self._by_topic.get(tp.topic)
            if rt is not None and rt.backpressure.paused and self._consumer is not None:
                self._consumer.pause(tp)
                rt.paused.add(tp)
        log.info("assigned", extra={"event": "assigned", "partitions": _tp_names(assigned)})

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the revoked partitions' work (bounded), commit it, then let them go.

        Rows still waiting in a batcher are dispatched now; whatever is not acknowledged by the
        deadline is abandoned deterministically: not committed, so the next owner redoes it.
        """
        if not revoked:
            return
        deadline = time.monotonic() + min(self.settings.drain_timeout_s, 5.0)
        now = time.monotonic()
        for rt in self.paths.values():
            self._flush(rt, now)
        while time.monotonic() < deadline and any(
            self.watermark.pending(tp) for tp in revoked if tp in self.watermark.partitions()
        ):
            await asyncio.sleep(0.005)
        await self._commit(only=revoked)
        for tp in revoked:
            self.watermark.forget(tp)
            self._generation[tp] = self._generation.get(tp, 0) + 1
            for rt in self.paths.values():
                rt.paused.discard(tp)
        log.info("revoked", extra={"event": "revoked", "partitions": _tp_names(revoked)})

    # ----------------------------------------------------------------- fetch
    async def _fetch_loop(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stopping.is_set():
            try:
                fetched = await consumer.getmany(timeout_ms=100, max_records=self._fetch_room())
            except KafkaError as exc:
                log.warning("fetch failed", extra={"event": "fetch_error", "error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            if self._stopping.is_set():
                # Fetched after the stop: not tracked, not committed; the next owner reads them.
                break
            now = time.monotonic()
            for tp, messages in fetched.items():
                rt = self._by_topic.get(tp.topic)
                if rt is not None and messages:
                    self._ingest(rt, tp, messages, now)
            # A batch whose linger is already over (the budget left none) is dispatched now,
            # not after a wake-up of the ticker. Measured on 2 cores: the linger stage went
            # from 0.6 ms mean to 0; its task still starts one loop turn later ("queue" stage,
            # 0.07 -> 0.45 ms), so end to end this moved the hop more than it removed it.
            self._dispatch_due(now)
            self._dispatch_if_idle()
            self._apply_backpressure()
            self._wake_ticker.set()

    def _fetch_room(self) -> int:
        """Records one fetch may take: never more than the tightest unpaused path has room for.

        This makes the high watermark a hard bound on in-flight records, not a hint that one
        large fetch could overshoot by max_poll_records.
        """
        rooms = [
            rt.backpressure.high - rt.backpressure.inflight
            for rt in self.paths.values()
            if not rt.backpressure.paused
        ]
        room = min(rooms) if rooms else 1
        return max(1, min(self.settings.max_poll_records, room))

    def _ingest(self, rt: PathRuntime, tp: TopicPartition, messages: list[Any], now: float) -> None:
        """Decode a fetched chunk, DLQ the bad ones, tokenize the good ones in one call."""
        handler = rt.handler
        generation = self._generation.get(tp, 0)
        good: list[tuple[Any, Any]] = []
        for msg in messages:
            try:
                self.watermark.track(tp, msg.offset)
            except ValueError:
                # The consumer went back (offset reset / seek): the old tracking is void; late
                # completions of the old generation are ignored by their generation number.
                log.warning("offset went back", extra={"event": "offset_reset", "tp": str(tp)})
                self.watermark.forget(tp)
                generation = self._generation[tp] = generation + 1
                self.watermark.track(tp, msg.offset)
            rt.backpressure.add(1)
            try:
                good.append((msg, handler.decode(msg.value if msg.value is not None else b"")))
            except DecodeError as err:
                self._send_dead_letter(rt, tp, generation, msg, err.code, err.reason)
        self.metrics.records_in.labels(handler.name).inc(len(messages))
        if not good:
            return
        oldest_ts = min(_source_ts_ms(ev, msg) for msg, ev in good)
        rt.linger.observe("fetch", max(0.0, time.time() - oldest_ts / 1000.0))
        self.metrics.stage_latency.labels(handler.name, "fetch").observe(
            max(0.0, time.time() - oldest_ts / 1000.0)
        )
        try:
            encoded = handler.tokenize([ev for _, ev in good])
        except Exception as exc:  # a tokenizer failure must not stop the stream
            for msg, _ in good:
                self._send_dead_letter(rt, tp, generation, msg, ErrorCode.MODEL_ERROR, repr(exc))
            return
        for (msg, ev), (ids, types, truncated) in zip(good, encoded, strict=True):
            row = Row(
                tp=tp,
                offset=msg.offset,
                generation=generation,
                key=msg.key,
                event=ev,
                source_ts_ms=_source_ts_ms(ev, msg),
                fetched_at=now,
                input_ids=ids,
                token_type_ids=types,
                truncated=truncated or bool(getattr(ev, "truncated", False)),
            )
            for batch in rt.batcher.add(row, row.n_tokens, now):
                self._dispatch(rt, batch)

    async def _linger_ticker(self) -> None:
        """Close batches whose linger expired; sleeps until the nearest deadline."""
        while not self._stopping.is_set():
            deadlines = [
                d for rt in self.paths.values() if (d := rt.batcher.deadline()) is not None
            ]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.5
            self._wake_ticker.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_ticker.wait(), timeout=timeout)
            self._dispatch_due(time.monotonic())
            for rt in self.paths.values():
                self.metrics.linger_seconds.labels(rt.handler.name).set(rt.linger.linger())

    def _dispatch_due(self, now: float) -> None:
        """Dispatch every open batch whose linger deadline has passed."""
        for rt in self.paths.values():
            while (batch := rt.batcher.poll(now)) is not None:
                self._dispatch(rt, batch)

    # ----------------------------------------------------------------- dispatch
    def _flush(self, rt: PathRuntime, now: float) -> None:
        """Dispatch the path's open batches now, whatever their linger (drain, revoke, paused)."""
        while (batch := rt.batcher.flush(now)) is not None:
            self._dispatch(rt, batch)

    def _dispatch_if_idle(self) -> None:
        """Work-conserving dispatch: a worker with nothing to run takes the open batch now.

        Lingering pays off only while the device is busy (rows gather during the run and go
        as one batch); with a worker idle it is pure added latency. Called after every fetch
        and whenever a batch's model call returns, so under load batches grow by themselves
        and at a trickle each row goes at once. Linger still bounds the wait in between.
        """
        if not self.settings.dispatch_when_idle:
            return
        parallelism = max(1, self.executor.parallelism)
        now = time.monotonic()
        for rt in self.paths.values():
            while self._running_batches < parallelism:
                batch = rt.batcher.flush(now, reason="idle")
                if batch is None:
                    break
                self._dispatch(rt, batch)

    def _dispatch(self, rt: PathRuntime, batch: Batch[Row]) -> None:
        self._running_batches += 1
        self.metrics.batches.labels(rt.handler.name, batch.reason).inc()
        task = asyncio.create_task(self._process(rt, batch))
        rt.inflight_tasks.add(task)
        task.add_done_callback(rt.inflight_tasks.discard)

    async def _process(self, rt: PathRuntime, batch: Batch[Row]) -> None:
        """Run one batch through the model and publish its results; never raises."""
        name = rt.handler.name
        rows = batch.items
        # queue: closed -> picked up by this task (event-loop lag under load).
        queue_wait = time.monotonic() - batch.closed_at
        rt.linger.observe("queue", max(0.0, queue_wait))
        self.metrics.stage_latency.labels(name, "queue").observe(max(0.0, queue_wait))
        self.metrics.stage_latency.labels(name, "linger").observe(batch.closed_at - batch.opened_at)
        self.metrics.batch_size.labels(name).observe(len(rows))
        real = sum(min(r.n_tokens, batch.seq_len) for r in rows)
        self.metrics.batch_fill.labels(name).observe(real / (batch.seq_len * batch.padded_rows))
        try:
            await self._infer_and_publish(rt, rows, batch.padded_rows, batch.seq_len, top=True)
        except Exception:  # pragma: no cover - last line of defence; logged, rows stay pending
            log.exception("batch failed", extra={"event": "batch_failed", "path": name})

    async def _infer_and_publish(
        self, rt: PathRuntime, rows: list[Row], padded_rows: int, seq_len: int, top: bool = False
    ) -> None:
        """Infer rows; on failure split the batch so one bad row cannot fail the others.

        ``top`` marks the batch's first model call: when it returns, the batch no longer
        occupies a worker (bisection retries of a failed batch are not counted).
        """
        name = rt.handler.name
        t0 = time.monotonic()
        try:
            ids, mask, types = pack_batch(rows, padded_rows, seq_len)
            scores = await self.executor.submit(rt.handler.task, ids, mask, types)
        except (ExecutorBrokenError, ExecutorClosedError) as exc:
            # Not this batch's fault: leave its rows uncommitted (the next owner redoes them)
            # and stop, so the orchestrator restarts a service whose workers cannot run.
            if not self._stopping.is_set():
                log.error(
                    "executor unusable", extra={"event": "executor_broken", "error": repr(exc)}
                )
                self._exit_code = 1
                self.request_stop()
            return
        except Exception as exc:
            # A batch-level failure (runner raised, poison batch): bisect so one bad row cannot
            # fail the others; a row that fails alone goes to the DLQ.
            if len(rows) == 1:
                row = rows[0]
                self._dead_letter_row(rt, row, ErrorCode.MODEL_ERROR, f"inference failed: {exc!r}")
                return
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                await self._infer_and_publish(rt, part, len(part), seq_len)
            return
        finally:
            if top:
                self._running_batches -= 1
                if not self._stopping.is_set():
                    self._dispatch_if_idle()
        model_s = time.monotonic() - t0
        rt.linger.observe("model", model_s)
        self.metrics.stage_latency.labels(name, "model").observe(model_s)
        outcomes = rt.handler.results(rows, np.asarray(scores))
        good_rows: list[Row] = []
        values: list[bytes] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, bytes):
                good_rows.append(row)
                values.append(outcome)
            else:
                self._dead_letter_row(rt, row, ErrorCode.MODEL_ERROR, outcome.reason)
        if good_rows:
            await self._publish(rt, good_rows, values)

    async def _publish(self, rt: PathRuntime, rows: Sequence[Row], values: list[bytes]) -> None:
        """Send results, wait for every ack, then mark their offsets done."""
        name = rt.handler.name
        topic = rt.handler.result_topic
        headers = [
            ("model", rt.handler.model.name.encode()),
            ("model_version", rt.handler.model.version.encode()),
        ]
        t0 = time.monotonic()
        records = [
            (row.event.event_id.encode(), value, headers)
            for row, value in zip(rows, values, strict=True)
        ]
        if not await self._send_until_acked(topic, records, name):
            return
        ack = time.monotonic()
        produce_s = ack - t0
        rt.linger.observe("produce", produce_s)
        self.metrics.stage_latency.labels(name, "produce").observe(produce_s)
        now_wall = time.time()
        e2e = self.metrics.e2e_latency.labels(name)
        for row in rows:
            e2e.observe(max(0.0, now_wall - row.source_ts_ms / 1000.0))
            self._done(rt, row.tp, row.offset, row.generation)
        self.metrics.results_out.labels(name).inc(len(rows))

    async def _send_until_acked(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes, Any]], path: str
    ) -> bool:
        """Send (key, value, headers) records, resending failures until every one is acked.

        A send that raises (buffer full, metadata timeout while the broker is away) and a
        future that fails are retried alike: nothing counts as done before the broker has it.
        Returns False only when a forced exit abandons the retry (the rows stay uncommitted).
        """
        assert self._producer is not None
        pending = list(range(len(records)))
        while pending:
            failed: list[int] = []
            sent: list[tuple[int, Any]] = []
            for i in pending:
                key, value, headers = records[i]
                try:
                    sent.append(
                        (i, await self._producer.send(topic, value, key=key, headers=headers))
                    )
                except KafkaError:
                    failed.append(i)
            outcomes = await asyncio.gather(*(fut for _, fut in sent), return_exceptions=True)
            failed += [
                i for (i, _), out in zip(sent, outcomes, strict=True) if isinstance(out, Exception)
            ]
            if failed:
                self.metrics.produce_errors.inc(len(failed))
                log.warning(
                    "produce failed; retrying",
                    extra={
                        "event": "produce_retry",
                        "path": path,
                        "topic": topic,
                        "records": len(failed),
                    },
                )
                if self._force_requested():
                    return False
                await asyncio.sleep(PRODUCE_RETRY_BACKOFF_S)
            pending = sorted(failed)
        return True

    def _force_requested(self) -> bool:
        return self._signals >= 2

    def _done(self, rt: PathRuntime, tp: TopicPartition, offset: int, generation: int) -> None:
        rt.backpressure.remove(1)
        if self._generation.get(tp, 0) == generation:
            self.watermark.done(tp, offset)
        self._apply_backpressure()

    # ----------------------------------------------------------------- DLQ
    def _send_dead_letter(
        self,
        rt: PathRuntime,
        tp: TopicPartition,
        generation: int,
        msg: Any,
        code: ErrorCode,
        reason: str,
    ) -> None:
        """Publish a DLQ record for a fetched message; its offset counts as done on ack."""
        self._send_dead_letter_fields(
            rt, tp, generation, msg.offset, msg.timestamp, msg.key, msg.value or b"", code, reason
        )

    def _dead_letter_row(self, rt: PathRuntime, row: Row, code: ErrorCode, reason: str) -> None:
        """DLQ a decoded row whose inference failed alone (the payload is re-encoded)."""
        event = row.event
        payload = (
            codec.encode_query_event(event)
            if isinstance(event, QueryEvent)
            else codec.encode_pair_event(event)
        )
        self._send_dead_letter_fields(
            rt, row.tp, row.generation, row.offset, row.source_ts_ms, row.key, payload, code,
            reason, event_id=event.event_id,
        )  # fmt: skip

    def _send_dead_letter_fields(
        self,
        rt: PathRuntime,
        tp: TopicPartition,
        generation: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        payload: bytes,
        code: ErrorCode,
        reason: str,
        event_id: str | None = None,
    ) -> None:
        letter = DeadLetter.for_record(
            code,
            reason,
            source_topic=tp.topic,
            source_partition=tp.partition,
            source_offset=offset,
            source_timestamp_ms=timestamp_ms,
            payload=payload,
            key=key,
            service=SERVICE_NAME,
            dlq_ts_ms=int(time.time() * 1000),
            event_id=event_id,
        )
        self.metrics.dlq.labels(code.value).inc()
        task = asyncio.create_task(
            self._publish_dead_letter(rt, tp, offset, generation, key, letter)
        )
        rt.inflight_tasks.add(task)
        task.add_done_callback(rt.inflight_tasks.discard)

    async def _publish_dead_letter(
        self,
        rt: PathRuntime,
        tp: TopicPartition,
        offset: int,
        generation: int,
        key: bytes | None,
        letter: DeadLetter,
    ) -> None:
        value = codec.encode_dead_letter(letter)
        if await self._send_until_acked(
            self.settings.topic_dlq, [(key, value, None)], rt.handler.name
        ):
            self._done(rt, tp, offset, generation)

    # ----------------------------------------------------------------- backpressure
    def _apply_backpressure(self) -> None:
        """Pause above the high mark, resume below the low one; never linger while paused."""
        if self._consumer is None:
            return
        for rt in self.paths.values():
            action = rt.backpressure.decide()
            if action is Action.PAUSE:
                tps = [
                    tp for tp in self._consumer.assignment() if tp.topic == rt.handler.source_topic
                ]
                self._consumer.pause(*tps)
                rt.paused.update(tps)
            elif action is Action.RESUME:
                self._consumer.resume(*rt.paused)
                rt.paused.clear()
            if rt.backpressure.paused:
                # No record can arrive until work completes: lingering only idles the workers.
                self._flush(rt, time.monotonic())
            self.metrics.paused_partitions.labels(rt.handler.name).set(len(rt.paused))
            self.metrics.inflight.labels(rt.handler.name).set(rt.backpressure.inflight)

    # ----------------------------------------------------------------- commit
    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000.0
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            await self._commit()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit each partition's contiguous done prefix (nothing past an unfinished record)."""
        if self._consumer is None:
            return
        points = self.watermark.advanced()
        if only is not None:
            points = {tp: off for tp, off in points.items() if tp in only}
        if not points:
            return
        try:
            await self._consumer.commit(points)
        except (CommitFailedError, KafkaError) as exc:
            # Rebalance in progress or broker away: the same offsets are retried next tick.
            log.warning("commit failed", extra={"event": "commit_failed", "error": repr(exc)})
            return
        for tp, off in points.items():
            self.watermark.mark_committed(tp, off)
        self.metrics.commits.inc()

    async def _gauges_loop(self) -> None:
        """Slow-moving gauges: consumer lag per partition, worker restarts."""
        while not self._stopping.is_set():
            await asyncio.sleep(1.0)
            self.metrics.worker_restarts.set(getattr(self.executor, "restarts", 0))
            if self._consumer is None:
                continue
            for tp in self._consumer.assignment():
                high = self._consumer.highwater(tp)
                if high is None:
                    continue
                try:
                    position = await self._consumer.position(tp)
                except KafkaError:
                    continue
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - position)
                )


def _source_ts_ms(event: Any, msg: Any) -> int:
    """The event's own timestamp if it has one, else the Kafka record's."""
    ts = getattr(event, "ts_ms", None)
    return int(ts) if ts is not None else int(msg.timestamp)


def _tp_names(tps: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
