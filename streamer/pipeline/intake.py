"""Intake: the live Kafka source. Fetch, decode, tokenize, hand rows to the batch runner; pause
partitions when in-flight work is over the high mark; finish partitions before they are revoked.

One fetch takes no more records than the tightest route has room for, so the backpressure high
mark is a hard bound on in-flight records. Bad records go to the DLQ at once (their offsets count
as done when the dead letter is acknowledged); good ones are tokenized in one call per fetched
chunk. On revocation the partitions' open batches run now, their results are awaited up to a
deadline and committed, and whatever is not acknowledged by then is left uncommitted for the
next owner (never lost, possibly redone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from streamer.errors import DecodeError, ErrorCode
from streamer.kafka import fetch_guard
from streamer.kafka.fetch_guard import UnreadableBatch
from streamer.pipeline.backpressure import Action
from streamer.pipeline.batch_runner import BatchRunner
from streamer.pipeline.metrics import Metrics
from streamer.pipeline.publisher import Publisher
from streamer.pipeline.routes import Row, source_ts_ms
from streamer.pipeline.stalls import StalledPartitions
from streamer.pipeline.state import Progress, RouteState, StopFlags

log = logging.getLogger("streamer.intake")


class ConsumerLike(Protocol):
    """What the intake needs of aiokafka's AIOKafkaConsumer."""

    def subscribe(self, topics: list[str], listener: Any = None) -> None: ...
    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Any: ...
    def assignment(self) -> set[Any]: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...
    def highwater(self, partition: Any) -> int | None: ...
    async def position(self, partition: Any) -> int: ...
    async def committed(self, partition: Any) -> int | None: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: Any) -> Any: ...
    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...
    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...


class KafkaIntake:
    """The live source: a subscribed consumer group over the routes' source topics."""

    def __init__(
        self,
        consumer: ConsumerLike,
        routes: Mapping[str, RouteState],
        runner: BatchRunner,
        publisher: Publisher,
        progress: Progress,
        metrics: Metrics,
        flags: StopFlags,
        *,
        max_poll_records: int,
        revoke_timeout_s: float,
        unreadable_policy: str = "hold",
        unreadable_retry_s: float = 5.0,
    ) -> None:
        self._consumer = consumer
        self.routes = routes
        self._by_topic = {s.handler.source_topic: s for s in routes.values()}
        self._runner = runner
        self._publisher = publisher
        self._progress = progress
        self._metrics = metrics
        self._flags = flags
        self._max_poll_records = max_poll_records
        self._revoke_timeout_s = revoke_timeout_s
        # Partitions held by exactly-once until their producer is up and the consumer has
        # re-read their committed offset; backpressure never resumes them (`hold`, `release`).
        self._unready: set[Any] = set()
        self._room = asyncio.Event()  # set when a held route opens or partitions arrive
        # A batch the consumer cannot read stops only its own partition (fetch_guard), which
        # is then held (retried with back-off) or skipped with a dead letter, by policy.
        fetch_guard.install()
        self._unreadable_policy = unreadable_policy
        self.stalls = StalledPartitions(retry_s=unreadable_retry_s)
        self._reports_seen = fetch_guard.reports.count
        # Schema Registry wire format: the routes share one registry (None: plain JSON only).
        # (getattr: a handler of a test or a benchmark may predate the attribute.)
        self._registry = next(
            (r for s in routes.values() if (r := getattr(s.handler, "registry", None))), None
        )
        progress.on_done = self.apply_backpressure

    @property
    def topics(self) -> list[str]:
        """The source topics this intake reads."""
        return sorted(self._by_topic)

    async def prepare(self) -> None:
        """Anything to do once workers and clients are up, before reading (live: nothing)."""

    def subscribe(self) -> None:
        """Join the consumer group on the source topics, with this intake's rebalance hooks."""
        self._consumer.subscribe(topics=self.topics, listener=_RebalanceListener(self))

    # ------------------------------------------------------------------ fetch
    async def fetch_loop(self) -> None:
        """Fetch until stopping; each chunk is ingested, then due batches run."""
        while not self._flags.stopping.is_set():
            partitions = self.open_partitions(self._consumer.assignment())
            if not partitions:
                # Every route is at its bound (or nothing is assigned yet): wait for room.
                await self.wait_for_room()
                continue
            fetched = await self.fetch(partitions, self.room())
            fetched_at, wall = time.monotonic(), time.time()  # the tail attribution's "fetched"
            if fetched is None:
                continue
            if self._flags.stopping.is_set():
                # Fetched after the stop: not tracked, not committed; the next owner reads them.
                break
            if not await self.resolve_schemas(fetched):
                break  # stopping while the schema registry is away: nothing tracked either
            for tp, messages in fetched.items():
                state = self._by_topic.get(tp.topic)
                if state is not None and messages:
                    self.ingest(state, tp, messages, fetched_at=fetched_at, fetched_wall=wall)
            self._runner.after_fetch(time.monotonic())
            self.apply_backpressure()

    async def resolve_schemas(self, fetched: dict[Any, list[Any]]) -> bool:
        """Schema Registry: resolve the chunk's new schema ids before the (synchronous) decode.

        While the registry is away this retries with backoff, readiness false, and ingests
        nothing: the records are neither tracked nor committed, so none is lost. Partitions
        revoked meanwhile are dropped from the chunk (their next owner reads them). False when
        the service stops first.
        """
        registry = self._registry
        if registry is None:
            return True
        values = (m.value for messages in fetched.values() for m in messages)
        if not await registry.prepare_until_ready(values, self._flags.stopping):
            return False
        for tp in [tp for tp in fetched if not self.owns(tp)]:
            del fetched[tp]
        return True

    async def wait_for_room(self, timeout_s: float = 0.1) -> None:
        """Until a held route opens or partitions arrive (or the timeout: re-check)."""
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout=timeout_s)

    async def fetch(self, partitions: list[Any], max_records: int) -> dict[Any, list[Any]] | None:
        """One bounded fetch of these partitions; None after a client error (`fetch_failed`).

        First the unreadable batches the previous fetch met are handled (each stopped only its
        own partition): only now, because the records that fetch returned from before the
        batch have been ingested, so a skip's dead letter is tracked after them, in offset
        order. Held partitions due for a retry are read again.
        """
        if fetch_guard.reports.count != self._reports_seen:
            self._reports_seen = fetch_guard.reports.count
            for batch in fetch_guard.take_unreadable(self._consumer, self._consumer.assignment()):
                self.unreadable(batch)
        try:
            fetched = dict(
                await self._consumer.getmany(*partitions, timeout_ms=100, max_records=max_records)
            )
        except KafkaError as exc:
            await self.fetch_failed(exc)
            return None
        if self.stalls:
            self._retry_held(fetched)
        return fetched

    async def fetch_failed(self, exc: KafkaError) -> None:
        """A fetch raised: log it and back off (the consumer retries from the same position).

        Unreadable batches never get here (`fetch_guard`); what does is about the client or a
        whole topic (authorization, the broker away), not about one partition's data.
        """
        log.warning("fetch failed", extra={"event": "fetch_error", "error": repr(exc)})
        await asyncio.sleep(0.5)

    def open_partitions(self, candidates: Iterable[Any]) -> list[Any]:
        """The candidates whose route is not held by backpressure (nor by exactly-once)."""
        return [
            tp
            for tp in candidates
            if tp not in self._unready
            and (state := self._by_topic.get(tp.topic)) is not None
            and not state.backpressure.paused
        ]

    def room(self) -> int:
        """Records one fetch may take: never more than the tightest open route has room for.

        This makes the high watermark a hard bound on in-flight records, not a hint that one
        large fetch could overshoot by max_poll_records. A fetch asks only for the partitions
        of open routes (`open_partitions`), so a held route's records cannot fill another
        route's room (they reached 200 in flight against a bound of 16 beside the pair route
        when one fetch served every partition: tests/integration/test_faults.py).
        """
        rooms = [
            s.backpressure.high - s.backpressure.inflight
            for s in self.routes.values()
            if not s.backpressure.paused
        ]
        room = min(rooms) if rooms else 1
        return max(1, min(self._max_poll_records, room))

    def ingest(
        self,
        state: RouteState,
        tp: Any,
        messages: list[Any],
        now: float | None = None,
        *,
        fetched_at: float | None = None,
        fetched_wall: float | None = None,
    ) -> None:
        """Decode a fetched chunk, DLQ the bad ones, tokenize the good ones in one call.

        `now`: the batcher's clock for these rows; None (the live loop): read after the
        tokenizer, so a batch never closes before its rows existed. `fetched_at` /
        `fetched_wall`: when the fetch returned (monotonic / wall), for the tail attribution.
        """
        handler = state.handler
        generation = self._progress.generation(tp)
        good: list[tuple[Any, Any]] = []
        state.backpressure.add(len(messages))
        for msg in messages:
            generation = self._progress.track(tp, msg.offset)
            try:
                if msg.value is None:
                    raise DecodeError(
                        ErrorCode.TOMBSTONE, "the record has no value (a tombstone): no event"
                    )
                good.append((msg, handler.decode(msg.value)))
            except DecodeError as err:
                self._publisher.dead_letter_message(
                    state, tp, generation, msg, err.code, err.reason
                )
        self._metrics.records_in.labels(state.name).inc(len(messages))
        if not good:
            return
        wall = time.time() if fetched_wall is None else fetched_wall
        fetch_s = max(0.0, wall - min(source_ts_ms(ev, m.timestamp) for m, ev in good) / 1e3)
        state.linger.observe("fetch", fetch_s)
        self._metrics.stage_latency.labels(state.name, "fetch").observe(fetch_s)
        try:
            encoded = handler.tokenize([ev for _, ev in good])
        except Exception as exc:  # a tokenizer failure must not stop the stream
            for msg, _ in good:
                self._publisher.dead_letter_message(
                    state, tp, generation, msg, ErrorCode.MODEL_ERROR, repr(exc)
                )
            return
        ready = time.monotonic() if now is None else now
        decode_s = 0.0 if fetched_at is None else max(0.0, ready - fetched_at)
        rows = []
        for (msg, ev), (ids, types, truncated) in zip(good, encoded, strict=True):
            ts_ms = source_ts_ms(ev, msg.timestamp)
            # LogAppendTime (type 1): the record's timestamp is the broker's append, which
            # splits the way in into "to the broker" and "fetched from it".
            appended = ts_ms / 1e3
            if getattr(msg, "timestamp_type", 0) == 1:
                appended = msg.timestamp / 1e3
            rows.append(
                Row(
                    tp=tp,
                    offset=msg.offset,
                    generation=generation,
                    key=msg.key,
                    event=ev,
                    source_ts_ms=ts_ms,
                    input_ids=ids,
                    token_type_ids=types,
                    truncated=truncated or bool(getattr(ev, "truncated", False)),
                    headers=msg.headers,
                    broker_s=max(0.0, appended - ts_ms / 1e3),
                    fetch_s=max(0.0, wall - max(appended, ts_ms / 1e3)),
                    decode_s=decode_s,
                    ready_at=ready,
                )
            )
        self._runner.add(state, rows, ready)

    # ------------------------------------------------------------------ unreadable batches
    def unreadable(self, batch: UnreadableBatch) -> None:
        """A batch this consumer cannot read stopped its partition (paused by the guard, the
        position at the batch). `hold`: keep it there, visible, and retry with back-off.
        `skip`: dead-letter the offset range with the reason and read on after it."""
        tp = batch.tp
        state = self._by_topic.get(tp.topic)
        if state is None or not self.owns(tp):
            return
        where = {
            "topic": tp.topic, "partition": tp.partition, "offset": batch.first_offset,
            "next_offset": batch.next_offset, "reason": batch.reason, "error": batch.error,
        }  # fmt: skip
        held = self.stalls.get(tp)
        if held is None or held.batch.first_offset != batch.first_offset:  # not a retry
            self._metrics.unreadable_batches.labels(
                tp.topic, str(tp.partition), batch.reason, self._unreadable_policy
            ).inc()
        if self._unreadable_policy == "skip":
            self._skip(state, batch)
            log.error(
                "unreadable batch skipped: offsets %d..%d of %s[%d] dead-lettered (%s)",
                batch.first_offset, batch.next_offset - 1, tp.topic, tp.partition, batch.error,
                extra={"event": "unreadable_skipped", **where},
            )  # fmt: skip
            return
        stall, log_now = self.stalls.report(batch, time.monotonic(), time.time())
        self._metrics.stalled_since.labels(tp.topic, str(tp.partition), batch.reason).set(
            stall.wall_since
        )
        if log_now:
            log.error(
                "partition held at an unreadable batch: %s[%d] offset %d (%s); nothing is "
                "skipped (unreadable_batch_policy=hold); retrying every <= %.0f s",
                tp.topic, tp.partition, batch.first_offset, batch.error, self.stalls.max_retry_s,
                extra={"event": "unreadable_held", "held_s": round(time.monotonic() - stall.since, 1),
                       **where},
            )  # fmt: skip

    def _skip(self, state: RouteState, batch: UnreadableBatch) -> None:
        """One dead letter stands for the whole range and is accounted at its last offset, so
        its acknowledgement (or, exactly-once, its transaction) commits past the batch; the
        consumer reads on after it."""
        tp = batch.tp
        state.backpressure.add(1)
        generation = self._progress.track(tp, batch.next_offset - 1)
        self._publisher.dead_letter_range(
            state, tp, generation, batch.first_offset, batch.next_offset, ErrorCode.UNREADABLE_BATCH,
            f"unreadable record batch ({batch.reason}): offsets {batch.first_offset}.."
            f"{batch.next_offset - 1} skipped by unreadable_batch_policy=skip: {batch.error}",
        )  # fmt: skip
        self._consumer.seek(tp, batch.next_offset)
        if tp not in self._unready:
            self._consumer.resume(tp)

    def _retry_held(self, fetched: Mapping[Any, list[Any]]) -> None:
        """Held partitions that returned records are readable again; those due are re-read
        (the guard pauses them again if the batch still cannot be read)."""
        for tp, messages in fetched.items():
            held = self.stalls.get(tp)
            if held is not None and messages and messages[-1].offset >= held.batch.first_offset:
                self._release_stall(tp, "readable again")
        for tp in self.stalls.due(time.monotonic()):
            if self.owns(tp) and tp not in self._unready:
                self._consumer.resume(tp)

    def _release_stall(self, tp: Any, why: str) -> None:
        stall = self.stalls.clear(tp)
        if stall is None:
            return
        with contextlib.suppress(KeyError):
            self._metrics.stalled_since.remove(tp.topic, str(tp.partition), stall.batch.reason)
        log.info(
            "partition no longer held: %s[%d] (%s)", tp.topic, tp.partition, why,
            extra={"event": "unreadable_released", "topic": tp.topic, "partition": tp.partition},
        )  # fmt: skip

    def stalled_over(self, limit_s: float) -> list[str]:
        """`topic[partition]@offset (reason)` of partitions held longer than limit_s."""
        return sorted(
            f"{s.batch.tp.topic}[{s.batch.tp.partition}]@{s.batch.first_offset} ({s.batch.reason})"
            for s in self.stalls.older_than(limit_s, time.monotonic())
        )

    # ------------------------------------------------------------------ backpressure
    def apply_backpressure(self) -> None:
        """Hold a route above the high mark, open it below the low one; never linger while held.

        Holding is not the consumer's pause(): aiokafka drops a paused partition's prefetched
        records and fetches them again on resume, so every pause/resume cycle re-read and
        re-parsed them and left the workers idle for the round trip. A held route's partitions
        are simply not asked for (`open_partitions`); what the fetcher already has for them
        (at most one fetch response per partition, `max_partition_fetch_bytes`) stays buffered
        and is handed over the moment the route opens.
        """
        for state in self.routes.values():
            action = state.backpressure.decide()
            if action is Action.PAUSE:
                state.paused.update(
                    tp for tp in self._consumer.assignment()
                    if tp.topic == state.handler.source_topic
                )  # fmt: skip
            elif action is Action.RESUME:
                state.paused.clear()
                self._room.set()
            if state.backpressure.paused:
                # No record can arrive until work completes: lingering only idles the workers.
                self._runner.flush(state, time.monotonic())
            self._metrics.paused_partitions.labels(state.name).set(len(state.paused))
            self._metrics.inflight.labels(state.name).set(state.backpressure.inflight)

    # ------------------------------------------------------------------ rebalance
    def on_assigned(self, assigned: set[Any]) -> None:
        """New partitions: bump their generation; pause them if their route is paused."""
        self._progress.assigned(assigned)
        for tp in assigned:
            state = self._by_topic.get(tp.topic)
            if state is not None and state.backpressure.paused:
                state.paused.add(tp)
        self._room.set()
        log.info("assigned", extra={"event": "assigned", "partitions": tp_names(assigned)})

    async def set_up_assigned(self, assigned: set[Any]) -> None:
        """After `on_assigned`, inside the rebalance callback: the publisher's set-up of the new
        partitions (exactly-once: their producers and a re-read of their committed offsets)."""
        await self._publisher.partitions_assigned(assigned)

    async def on_revoked(self, revoked: set[Any]) -> None:
        """Finish the revoked partitions' work (bounded), commit it, then let them go.

        Rows still waiting in a batcher are dispatched now; whatever is not acknowledged by the
        deadline is abandoned deterministically: not committed, so the next owner redoes it.
        """
        if not revoked:
            return
        deadline = time.monotonic() + self._revoke_timeout_s
        self._runner.flush_all(time.monotonic())
        while time.monotonic() < deadline and self._progress.pending_in(revoked):
            await asyncio.sleep(0.005)
        await self._publisher.commit(only=revoked)
        self._progress.revoked(revoked)
        await self._publisher.partitions_revoked(revoked)
        self._unready -= revoked
        for tp in revoked:
            self._release_stall(tp, "revoked")
        for state in self.routes.values():
            state.paused.difference_update(revoked)
        log.info("revoked", extra={"event": "revoked", "partitions": tp_names(revoked)})

    # ------------------------------------------------------------------ partition control
    # Exactly-once (`exactly_once.PartitionControl`): a partition is processed only once its
    # transactional producer is up and the consumer has re-read its committed offset.
    def hold(self, tps: Iterable[Any]) -> None:
        """Stop fetching these partitions until `release` (backpressure leaves them paused)."""
        held = set(tps)
        self._unready |= held
        self._consumer.pause(*held)

    def release(self, tps: Iterable[Any]) -> None:
        """Fetch these partitions again (once their route has room: backpressure holds routes
        without pausing the consumer)."""
        for tp in tps:
            self._unready.discard(tp)
            state = self._by_topic.get(tp.topic)
            if state is not None and state.backpressure.paused:
                state.paused.add(tp)  # opens with the route
            if self.owns(tp) and tp not in self.stalls:
                self._consumer.resume(tp)
        self._room.set()

    async def reposition(self, tps: Iterable[Any]) -> None:
        """Seek to the committed offset as the broker has it now (the start when none)."""
        for tp in tps:
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def owns(self, tp: Any) -> bool:
        """Whether tp is assigned to this consumer now."""
        return tp in self._consumer.assignment()

    # ------------------------------------------------------------------ lag
    async def lag_loop(self, interval_s: float = 1.0) -> None:
        """Export consumer lag (high watermark minus position) per assigned partition."""
        while not self._flags.stopping.is_set():
            await asyncio.sleep(interval_s)
            for tp in self._consumer.assignment():
                high = self._consumer.highwater(tp)
                if high is None:
                    continue
                try:
                    # Bounded: aiokafka waits for the position of a partition revoked meanwhile
                    # without end (seen in the replay's rebalance tests).
                    position = await asyncio.wait_for(self._consumer.position(tp), timeout=1.0)
                except (TimeoutError, KafkaError):
                    continue
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - position)
                )


class _RebalanceListener(ConsumerRebalanceListener):
    """Forwards aiokafka's rebalance callbacks to the intake."""

    def __init__(self, intake: KafkaIntake) -> None:
        self._intake = intake

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._intake.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._intake.on_assigned(set(assigned))
        await self._intake.set_up_assigned(set(assigned))


def tp_names(tps: Iterable[Any]) -> list[str]:
    """`topic[partition]` names for logs, sorted."""
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
