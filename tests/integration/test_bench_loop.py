"""Load generator -> trivial echo app -> sink, on the real broker: every event comes back once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from streamer.bench.events import EventFactory
from streamer.bench.harness import create_topics
from streamer.bench.loadgen import run_load, schedule
from streamer.bench.sink import LatencyRecorder, Sink
from streamer.records.samples import BAD_RECORDS
from tests.fixtures.kafka import TopicFactory

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def echo(bootstrap: str, source: str, results: str, group: str, ready: asyncio.Event) -> None:
    """Forward every record unchanged (key = event id), like a zero-cost contender."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", fetch_max_wait_ms=5)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await consumer.start()
    await producer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        ready.set()
        while True:
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for r in records:
                    await producer.send(results, r.value, key=r.key)
    finally:
        await consumer.stop()
        await producer.stop()


async def test_open_loop_round_trip_counts_every_event(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    # named by the factory, created here: the results topic needs LogAppendTime
    source, results = topic_factory.new_name("bench-in"), topic_factory.new_name("bench-out")
    await create_topics(kafka_bootstrap, [source, results], 2, {results})
    ready = asyncio.Event()
    task = asyncio.create_task(echo(kafka_bootstrap, source, results, f"g-{source}", ready))
    sink = Sink(kafka_bootstrap, results)
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await sink.start()
        scheduled: dict[str, int] = {}
        sink.recorder = LatencyRecorder(scheduled)
        bad = [raw for _, _, raw in BAD_RECORDS]
        load = await run_load(kafka_bootstrap, source, schedule(100, 2.0), EventFactory("query"),
                              offered_rate=100, bad_records=bad, bad_fraction=0.1, seed=3,
                              scheduled_ms=scheduled)  # fmt: skip
        assert await sink.wait_complete(30)
        await asyncio.sleep(0.5)  # let any stray duplicate arrive before counting
        report = sink.recorder.report()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.stop()
    assert load.scheduled == 200 and load.failed == 0 and load.acked == 200
    assert 0 < load.bad < 60
    assert report.expected == 200 - load.bad == len(scheduled)
    assert report.unique == report.expected and report.missing == 0 and report.duplicates == 0
    assert report.unknown == load.bad  # echoed malformed records carry no known id
    assert report.broker.count == report.unique
    assert report.create_time_stamped == 0  # the broker stamped every result at append
    assert report.observed.p50_ms >= 0 and report.observed.max_ms < 30_000
