"""The group's committed-offset lag and time lag, sampled from the real broker."""

from __future__ import annotations

import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streamer.config import load_settings
from streamer.kafka.clients import make_admin, make_lag_probe
from streamer.pipeline.lag import GroupLagMonitor
from streamer.pipeline.metrics import Metrics
from streamer.pipeline.state import StopFlags

pytestmark = [pytest.mark.kafka]

AGE_S = 120.0


def _sample_value(metrics: Metrics, name: str, topic: str, partition: int) -> float:
    value = metrics.registry.get_sample_value(name, {"topic": topic, "partition": str(partition)})
    assert value is not None, name
    return value


async def test_committed_lag_and_age_of_oldest_unprocessed_record(
    kafka_bootstrap: str, topic_factory
) -> None:
    topic = await topic_factory(partitions=3)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    old_ms = int((time.time() - AGE_S) * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # partition 0: 10 records stamped AGE_S ago; partition 1: 4 fresh ones; partition 2: none
        for i in range(10):
            await producer.send_and_wait(topic, b"x", partition=0, timestamp_ms=old_ms + i)
        for _ in range(4):
            await producer.send_and_wait(topic, b"y", partition=1)
    finally:
        await producer.stop()
    # The group has finished 6 records of partition 0 and all of partition 1.
    committer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await committer.start()
    try:
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        committer.assign([tp0, tp1])
        await committer.commit({tp0: OffsetAndMetadata(6, ""), tp1: OffsetAndMetadata(4, "")})
    finally:
        await committer.stop()

    settings = load_settings(bootstrap_servers=kafka_bootstrap, group_id=group)
    metrics = Metrics()
    monitor = GroupLagMonitor(
        make_admin(settings), make_lag_probe(settings), metrics, StopFlags(),
        group_id=group, topics=[topic], interval_s=1.0,
    )  # fmt: skip
    try:
        await monitor._start()
        sampled = await monitor.sample()
        again = await monitor.sample()  # a second sample re-reads the same record
    finally:
        await monitor.close()

    lag = {tp.partition: value for tp, value in sampled.items()}
    assert lag[0][0] == 4 and lag[1][0] == 0 and lag[2][0] == 0
    # The record at offset 6 was stamped AGE_S - 6 ms ago.
    assert AGE_S - 1 <= lag[0][1] <= AGE_S + 60
    assert lag[1][1] == 0.0 and lag[2][1] == 0.0
    assert again[TopicPartition(topic, 0)][0] == 4
    assert again[TopicPartition(topic, 0)][1] >= lag[0][1]
    assert _sample_value(metrics, "streamer_consumer_group_lag", topic, 0) == 4
    assert _sample_value(metrics, "streamer_consumer_group_lag_seconds", topic, 0) >= AGE_S - 1
    assert _sample_value(metrics, "streamer_consumer_group_lag", topic, 2) == 0


async def test_a_group_without_commits_owes_the_whole_log(
    kafka_bootstrap: str, topic_factory
) -> None:
    """auto_offset_reset=earliest: an uncommitted partition's lag is end minus log start."""
    topic = await topic_factory(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(5):
            await producer.send_and_wait(topic, b"z", partition=0)
    finally:
        await producer.stop()
    settings = load_settings(bootstrap_servers=kafka_bootstrap)
    monitor = GroupLagMonitor(
        make_admin(settings), make_lag_probe(settings), Metrics(), StopFlags(),
        group_id=f"never-{uuid.uuid4().hex[:8]}", topics=[topic], interval_s=1.0,
    )  # fmt: skip
    try:
        await monitor._start()
        sampled = await monitor.sample()
    finally:
        await monitor.close()
    ((records, seconds),) = sampled.values()
    assert records == 5
    assert 0.0 <= seconds < 600
