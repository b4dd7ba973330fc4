"""The demo's answer tables read every record of a topic back from the real broker.

They once came out empty: `seek_to_beginning()` only schedules a reset, and the consumer's own
"latest" reset could win, leaving every position at the topic's end.
"""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streamer.bench.events import EventFactory
from streamer.demo.examples import pick_pairs, read_topic

pytestmark = [pytest.mark.kafka]


async def test_read_topic_returns_every_record_of_every_partition(
    kafka_bootstrap: str, topic_factory
) -> None:
    topics = [await topic_factory(partitions=4, prefix="demo-read") for _ in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for topic in topics:
            for i in range(40):
                await producer.send_and_wait(topic, b"v%d" % i, partition=i % 4)
    finally:
        await producer.stop()
    for topic in topics:  # each read starts a fresh consumer, as the demo's four reads do
        values = await read_topic(kafka_bootstrap, topic)
        assert sorted(values) == sorted(b"v%d" % i for i in range(40))


async def test_pair_answers_join_results_to_their_events(
    kafka_bootstrap: str, topic_factory
) -> None:
    pairs_topic = await topic_factory(partitions=2, prefix="demo-pairs")
    results_topic = await topic_factory(partitions=2, prefix="demo-dups")
    factory = EventFactory("pair")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(6):
            await producer.send_and_wait(pairs_topic, factory(f"e{i}", 0, i))
            result = {"event_id": f"e{i}", "score": i / 10, "is_duplicate": i >= 4}
            await producer.send_and_wait(results_topic, orjson.dumps(result))
    finally:
        await producer.stop()
    answers = pick_pairs(
        await read_topic(kafka_bootstrap, results_topic),
        await read_topic(kafka_bootstrap, pairs_topic),
    )
    assert [a.score for a in answers] == [0.5, 0.4, 0.0, 0.1, 0.2, 0.3]
    assert all(a.left and a.right for a in answers)
