"""The intake's unreadable-batch policies on the real parts (`app.assemble`) around fakes.

The guard's report is planted on a real aiokafka partition state, as
`streamer/kafka/fetch_guard.py` leaves it. Checked here: `skip` dead-letters the range after
the records read before the batch (offset order kept, so the commit passes the batch exactly
once they are all done), seeks past it and resumes; `hold` keeps the partition paused, makes
it a readiness reason once held past the bound, and re-reads it when its retry is due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiokafka.consumer.subscription_state import Assignment
from aiokafka.structs import TopicPartition

from streamer.kafka import fetch_guard
from streamer.kafka.fetch_guard import UnreadableBatch
from streamer.pipeline.service import Service
from streamer.records import codec
from tests.unit.test_trace_context import (
    DLQ,
    INTENTS,
    QUERIES,
    _Msg,
    _Producer,
    _query,
    _service,
)

TP0 = TopicPartition(QUERIES, 0)


class _GuardedConsumer:
    """What the intake calls of aiokafka's consumer, over a real aiokafka Assignment (where
    `fetch_guard.take_unreadable` looks: `consumer._subscription.subscription.assignment`)."""

    def __init__(
        self, chunks: list[dict[Any, list[_Msg]]], unreadable: UnreadableBatch | None = None
    ) -> None:
        self.tp_states = Assignment([TP0])
        self.tp_states.state_value(TP0).seek(0)
        subscription = type("Subscription", (), {"assignment": self.tp_states})()
        self._subscription = type("SubscriptionState", (), {"subscription": subscription})()
        self.chunks = chunks
        self.unreadable = unreadable  # met by the first getmany, after its records
        self.seeks: list[tuple[Any, int]] = []
        self.resumed: list[Any] = []

    def assignment(self) -> set[Any]:
        return set(self.tp_states.tps)

    def report(self, batch: UnreadableBatch) -> None:
        """What the guard does on a batch it cannot read."""
        state = self.tp_states.state_value(batch.tp)
        state.pause()
        setattr(state, "streamer_unreadable", batch)  # noqa: B010 (the guard's attribute)
        fetch_guard.reports.count += 1

    async def getmany(self, *tps: Any, timeout_ms: int = 0, max_records: int | None = None):
        """The next chunk; the guard's report is filed inside the call that met the batch."""
        if self.unreadable is not None:
            self.report(self.unreadable)
            self.unreadable = None
        return self.chunks.pop(0) if self.chunks else {}

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    def resume(self, *tps: Any) -> None:
        self.resumed.extend(tps)

    async def commit(self, offsets: Any) -> None: ...


class _ValueProducer(_Producer):
    """Acknowledges at once and keeps (topic, key, value) of each record."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[tuple[str, Any, bytes]] = []

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> Any:
        self.values.append((topic, key, value))
        return await super().send(topic, value, key=key, headers=headers)


def _wire(consumer: _GuardedConsumer, **overrides: Any) -> tuple[Service, _ValueProducer]:
    producer = _ValueProducer()
    service, _ = _service(producer=producer, consumer=consumer, **overrides)
    return service, producer


async def _settle(service: Any) -> None:
    state = service.routes["intent"]
    service.runner.flush_all(now=time.monotonic())
    for _ in range(50):
        if not state.tasks:
            return
        await asyncio.gather(*list(state.tasks))


def _letters(producer: _ValueProducer) -> list[dict[str, Any]]:
    return [
        dataclasses.asdict(codec.decode_dead_letter(v)) for t, _, v in producer.values if t == DLQ
    ]


async def test_skip_dead_letters_the_range_after_what_came_before_and_reads_on() -> None:
    bad = UnreadableBatch(TP0, 5, 10, "codec", "UnsupportedCodecError('lz4')")
    consumer = _GuardedConsumer([{TP0: [_query(i) for i in range(5)]}], unreadable=bad)
    service, producer = _wire(consumer, unreadable_batch_policy="skip")
    intake, state = service.intake, service.routes["intent"]
    fetched = await intake.fetch([TP0], 100)
    intake.ingest(state, TP0, fetched[TP0], time.monotonic())
    await intake.fetch([TP0], 100)  # handles the report left by the previous fetch
    await _settle(service)
    assert consumer.seeks == [(TP0, 10)] and consumer.resumed == [TP0]
    [letter] = _letters(producer)
    assert (letter["error_code"], letter["source_offset"], letter["source_offset_end"]) == (
        "UNREADABLE_BATCH", 5, 10,
    )  # fmt: skip
    assert "lz4" in letter["reason"] and "5..9" in letter["reason"]
    assert [k for t, k, _ in producer.values if t == INTENTS] == [
        f"q{i}".encode() for i in range(5)
    ]
    assert service.intake._progress.watermark.commit_point(TP0) == 10  # type: ignore[attr-defined]
    assert state.backpressure.inflight == 0
    assert service.not_ready_reasons() == []


async def test_hold_keeps_the_partition_names_it_and_retries_it() -> None:
    bad = UnreadableBatch(TP0, 1, 4, "crc", "CorruptRecordException('Invalid CRC')")
    consumer = _GuardedConsumer([{TP0: [_query(0)]}], unreadable=bad)
    service, producer = _wire(
        consumer, unreadable_batch_policy="hold", unreadable_retry_s=0.05, unreadable_ready_s=0
    )
    intake, state = service.intake, service.routes["intent"]
    fetched = await intake.fetch([TP0], 100)
    intake.ingest(state, TP0, fetched[TP0], time.monotonic())
    await intake.fetch([TP0], 100)
    await _settle(service)
    assert consumer.seeks == [] and _letters(producer) == []
    await asyncio.sleep(0.01)
    assert service.not_ready_reasons() == [
        f"partition held at an unreadable batch: {QUERIES}[0]@1 (crc)"
    ]
    assert not service.is_ready()
    await asyncio.sleep(0.06)
    await intake.fetch([TP0], 100)  # the retry is due: read it again
    assert consumer.resumed == [TP0]
    # The batch read fine this time: records at and past it clear the hold.
    consumer.chunks.append({TP0: [_query(1), _query(2)]})
    await intake.fetch([TP0], 100)
    assert service.not_ready_reasons() == []
