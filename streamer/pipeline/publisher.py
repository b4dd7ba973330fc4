"""Publisher: results and dead letters to Kafka, acknowledged before their offsets count as done.

At-least-once: a record's offset is marked done (`Progress.done`) only after the broker has
acknowledged its result or its dead letter (acks=all), and `commit` sends each partition's
contiguous done prefix (the watermark) on a timer, never past an unfinished record. Sends that
fail, whether `send()` raises (broker away, buffer full) or its future fails, are resent until
acknowledged: nothing counts as done before the broker has it. Only a forced exit abandons a
retry, leaving the rows uncommitted for the next owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

from aiokafka.errors import CommitFailedError, KafkaError

from streamer.errors import ErrorCode
from streamer.pipeline.attribution import BatchClock, TailAttribution
from streamer.pipeline.metrics import Metrics
from streamer.pipeline.routes import Row
from streamer.pipeline.state import Progress, RouteState, StopFlags
from streamer.records import codec
from streamer.records.types import DeadLetter

log = logging.getLogger("streamer.publisher")

SERVICE_NAME = "streamer"
PRODUCE_RETRY_BACKOFF_S = 0.2

Record = tuple[bytes | None, bytes, Any]  # key, value, headers
Header = tuple[str, bytes | None]  # a Kafka header: name, value (None: a null value)


class ProducerLike(Protocol):
    """What the publisher needs of aiokafka's AIOKafkaProducer."""

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> Any: ...


CommitFn = Callable[[dict[Any, int]], Awaitable[None]]
# Extra headers of one record, from its source coordinates (the replay adds replay-id and
# source-offset); None: the model headers only.
HeaderFn = Callable[[Any, int], list[tuple[str, bytes]]]


def forwarded(
    own: Sequence[Header], upstream: Sequence[Header], names: frozenset[str]
) -> Sequence[Header]:
    """`own` headers, then the input record's headers named in `names` (trace context).

    Why this shape: the service's own headers come first and an upstream header of the same
    name is dropped, so a producer upstream can never relabel a result's model or a replay's
    id. On the hot path it costs one set lookup per input header, and nothing for a record
    without headers; `own` is returned as is (not copied) when nothing is forwarded.
    """
    if not upstream or not names:
        return own
    picked = [(k, v) for k, v in upstream if k in names]
    if not picked:
        return own
    if own:
        taken = {k for k, _ in own}
        picked = [(k, v) for k, v in picked if k not in taken]
    return [*own, *picked]


class Publisher:
    """Sends results and dead letters until acknowledged; commits what is contiguously done."""

    # Schema Registry wire format of dead letters (`SchemaRegistry.frame_dead_letter`, set by
    # app.assemble when a registry is configured); None: plain JSON.
    frame_dead_letter: Callable[[bytes], bytes] | None = None

    def dead_letter_value(self, letter: DeadLetter) -> bytes:
        """A dead letter's value bytes: JSON, framed when a registry is configured."""
        value = codec.encode_dead_letter(letter)
        frame = self.frame_dead_letter
        return value if frame is None else frame(value)

    def __init__(
        self,
        producer: ProducerLike,
        progress: Progress,
        metrics: Metrics,
        flags: StopFlags,
        *,
        dlq_topic: str,
        commit: CommitFn,
        extra_headers: HeaderFn | None = None,
        forward_headers: Iterable[str] = (),
    ) -> None:
        self._producer = producer
        self._progress = progress
        self._metrics = metrics
        self._flags = flags
        self._dlq_topic = dlq_topic
        self._commit = commit
        self._extra_headers = extra_headers
        self._forward = frozenset(forward_headers)  # upstream headers copied to the outputs
        self._tails: dict[str, TailAttribution] = {}

    def tail(self, route: str) -> TailAttribution:
        """The route's tail attribution (built on first use, on this publisher's metrics)."""
        tail = self._tails.get(route)
        if tail is None:
            m = self._metrics
            tail = self._tails[route] = TailAttribution(
                m.tail_segment_seconds, m.tail_events, m.tail_threshold, route
            )
        return tail

    # ------------------------------------------------------------------ partitions
    # Exactly-once delivery (`exactly_once.TransactionalPublisher`) keeps a producer per input
    # partition and must see the consumer re-read its committed offsets after assignment; here
    # (at-least-once) one shared producer serves every partition and these are no-ops.
    transactional = False

    async def partitions_assigned(self, tps: set[Any]) -> None:
        """Partitions were assigned (the intake calls this from the rebalance callback)."""

    async def partitions_revoked(self, tps: set[Any]) -> None:
        """Revoked partitions were committed and let go."""

    async def close(self) -> None:
        """Release what the publisher owns beyond the shared clients (shutdown)."""

    # ------------------------------------------------------------------ results
    def result_records(
        self, state: RouteState, rows: Sequence[Row], values: list[bytes]
    ) -> list[Record]:
        """(key, value, headers) of each row's result: key = event id, the model's headers,
        then the input's forwarded headers (`forwarded`)."""
        model = state.handler.model
        headers = [("model", model.name.encode()), ("model_version", model.version.encode())]
        if model.variant == "emulated":  # never mistaken for a model's answer downstream
            headers.append(("device", model.target.encode()))
        extra = self._extra_headers
        names = self._forward
        return [
            (
                row.event.event_id.encode(),
                value,
                forwarded(
                    headers if extra is None else headers + extra(row.tp, row.offset),
                    row.headers,
                    names,
                ),
            )
            for row, value in zip(rows, values, strict=True)
        ]

    async def publish(
        self,
        state: RouteState,
        rows: Sequence[Row],
        values: list[bytes],
        clock: BatchClock | None = None,
    ) -> None:
        """Send one batch's results, wait for every ack, then mark their offsets done.

        `clock`: the batch's hand-off times; with the ack time they go to the route's tail
        attribution (`attribution.TailAttribution`).
        """
        t0 = time.monotonic()
        records = self.result_records(state, rows, values)
        if not await self.send_until_acked(state.handler.result_topic, records, state.name):
            return
        ack = time.monotonic()
        if clock is not None:
            self.tail(state.name).batch_done(rows, clock, ack)
        produce_s = ack - t0
        state.linger.observe("produce", produce_s)
        self._metrics.stage_latency.labels(state.name, "produce").observe(produce_s)
        now_wall = time.time()
        e2e = self._metrics.e2e_latency.labels(state.name)
        for row in rows:
            e2e.observe(max(0.0, now_wall - row.source_ts_ms / 1000.0))
        self._progress.done_rows(state, rows)
        self._metrics.results_out.labels(state.name).inc(len(rows))

    async def send_until_acked(self, topic: str, records: Sequence[Record], route: str) -> bool:
        """Send (key, value, headers) records, resending failures until every one is acked.

        Returns False only when a forced exit abandons the retry (the rows stay uncommitted).
        """
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
                self._metrics.produce_errors.inc(len(failed))
                log.warning(
                    "produce failed; retrying",
                    extra={"event": "produce_retry", "route": route, "topic": topic,
                           "records": len(failed)},
                )  # fmt: skip
                if self._flags.forced.is_set():
                    return False
                await asyncio.sleep(PRODUCE_RETRY_BACKOFF_S)
            pending = sorted(failed)
        return True

    # ------------------------------------------------------------------ dead letters
    def dead_letter_message(
        self, state: RouteState, tp: Any, generation: int, msg: Any, code: ErrorCode,
        reason: str,
    ) -> None:  # fmt: skip
        """DLQ a fetched record that cannot be decoded (its raw bytes kept); done on ack."""
        self._dead_letter(
            state, tp, generation, msg.offset, msg.timestamp, msg.key, msg.value or b"", code,
            reason, None, msg.headers,
        )  # fmt: skip

    def dead_letter_row(self, state: RouteState, row: Row, code: ErrorCode, reason: str) -> None:
        """DLQ a decoded row whose inference failed alone (its route re-encodes the event)."""
        self._dead_letter(
            state, row.tp, row.generation, row.offset, row.source_ts_ms, row.key,
            state.handler.payload(row.event), code, reason, row.event.event_id, row.headers,
        )  # fmt: skip

    def dead_letter_range(
        self, state: RouteState, tp: Any, generation: int, first: int, end: int, code: ErrorCode,
        reason: str,
    ) -> None:  # fmt: skip
        """DLQ offsets first .. end - 1 that could not be read at all (an unreadable batch the
        `skip` policy passes): one letter without payload, `source_offset_end` marks the range;
        tracked (by the intake) and done at end - 1, the range's last offset, on ack."""
        self._dead_letter(
            state, tp, generation, first, None, None, b"", code, reason, None, (), end=end
        )

    def _dead_letter(
        self, state: RouteState, tp: Any, generation: int, offset: int, ts_ms: int | None,
        key: bytes | None, payload: bytes, code: ErrorCode, reason: str, event_id: str | None,
        upstream: Sequence[Header], end: int | None = None,
    ) -> None:  # fmt: skip
        """One dead letter for `offset` (or the range `offset` .. `end` - 1, done at its last
        offset), sent until acknowledged; its offset counts as done then."""
        letter = DeadLetter.for_record(
            code,
            reason,
            source_topic=tp.topic,
            source_partition=tp.partition,
            source_offset=offset,
            source_timestamp_ms=ts_ms,
            payload=payload,
            key=key,
            service=SERVICE_NAME,
            dlq_ts_ms=int(time.time() * 1000),
            event_id=event_id,
            source_offset_end=end,
        )
        self._metrics.dlq.labels(code.value).inc()
        headers = self.dead_letter_headers(tp, offset, upstream)
        done_at = offset if end is None else end - 1
        state.spawn(self._publish_dead_letter(state, tp, done_at, generation, key, letter, headers))

    def dead_letter_headers(
        self, tp: Any, offset: int, upstream: Sequence[Header]
    ) -> Sequence[Header] | None:
        """A dead letter's headers: the replay's (if any), then the input's forwarded ones, so
        a search request that failed here stays on its trace; None when there are none."""
        own = [] if self._extra_headers is None else self._extra_headers(tp, offset)
        return forwarded(own, upstream, self._forward) or None

    async def _publish_dead_letter(
        self,
        state: RouteState,
        tp: Hashable,
        offset: int,
        generation: int,
        key: bytes | None,
        letter: DeadLetter,
        headers: Sequence[Header] | None,
    ) -> None:
        value = self.dead_letter_value(letter)
        if await self.send_until_acked(self._dlq_topic, [(key, value, headers)], state.name):
            self._progress.done(state, tp, offset, generation)

    # ------------------------------------------------------------------ offsets
    async def commit(self, only: set[Any] | None = None) -> None:
        """Commit each partition's contiguous done prefix (nothing past an unfinished record)."""
        watermark = self._progress.watermark
        points = watermark.advanced()
        if only is not None:
            points = {tp: off for tp, off in points.items() if tp in only}
        if not points:
            return
        try:
            await self._commit(points)
        except (CommitFailedError, KafkaError) as exc:
            # Rebalance in progress or broker away: the same offsets are retried next tick.
            log.warning("commit failed", extra={"event": "commit_failed", "error": repr(exc)})
            return
        for tp, off in points.items():
            watermark.mark_committed(tp, off)
        self._metrics.commits.inc()

    async def commit_loop(self, interval_s: float) -> None:
        """Commit on a timer until stopping (the drain commits once more at the end)."""
        while not self._flags.stopping.is_set():
            await asyncio.sleep(interval_s)
            await self.commit()
