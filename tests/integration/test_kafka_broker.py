"""The broker features the service relies on, checked against a real Apache Kafka.

Each of these failed on the in-memory Tansu broker (DESIGN.md section 5): idempotent
producers, `offsets_for_times`, consumer-group offset listing. The restart test shows the
at-least-once contract end to end: committed offsets survive a broker restart and a new
consumer in the group resumes exactly there.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import uuid
from collections.abc import Iterable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from streamer.kafka import topics_cli
from streamer.kafka.local_broker import BrokerStartError, LocalKafka, pid_is_kafka
from streamer.kafka.topics import describe_topics, ensure_topics
from tests.fixtures.kafka import TopicFactory

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

# Tests wait on the broker, never on a fixed sleep; this bounds each wait.
WAIT_S = 30.0


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=1,
        request_timeout_ms=15_000,
    )


def _consumer(bootstrap: str, *topics: str, group_id: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
    )


async def _consume(
    consumer: AIOKafkaConsumer, count: int, timeout_s: float = WAIT_S
) -> list[ConsumerRecord[bytes, bytes]]:
    """Exactly `count` records (fewer only if the deadline passes; the test then fails)."""
    records: list[ConsumerRecord[bytes, bytes]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(records) < count and loop.time() < deadline:
        batch = await consumer.getmany(timeout_ms=200, max_records=count - len(records))
        for part in batch.values():
            records.extend(part)
    return records


async def _drain(
    consumer: AIOKafkaConsumer, expected: int, quiet_s: float = 1.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Everything the consumer gets: `expected` records, then `quiet_s` to catch extras."""
    records = await _consume(consumer, expected)
    extra = await consumer.getmany(timeout_ms=int(quiet_s * 1000))
    for part in extra.values():
        records.extend(part)
    return records


def _values(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[bytes]:
    return sorted(r.value for r in records if r.value is not None)


async def test_ensure_topics_is_idempotent(kafka_bootstrap: str) -> None:
    """Second call creates nothing, reports existing topics and any partition mismatch."""
    suffix = uuid.uuid4().hex[:8]
    names = {f"ensure-a-{suffix}": 3, f"ensure-b-{suffix}": 1}
    first = await ensure_topics(kafka_bootstrap, names)
    assert sorted(first.created) == sorted(names) and first.existing == ()
    asked_more = {name: 4 for name in names}
    second = await ensure_topics(kafka_bootstrap, asked_more)
    assert second.created == () and sorted(second.existing) == sorted(names)
    assert second.partition_mismatch == {name: (n, 4) for name, n in names.items()}
    described = await describe_topics(kafka_bootstrap, list(names))
    assert {name: info.partitions for name, info in described.items()} == names
    assert all(info.replication == 1 for info in described.values())


def cli_main(argv: list[str]) -> int:
    """`streamer topics ...` without importing the other commands' modules."""
    assert argv[0] == "topics"
    parser = argparse.ArgumentParser(prog="streamer topics")
    topics_cli.add_arguments(parser)
    return topics_cli.run(parser.parse_args(argv[1:]))


def test_topics_cli_create_is_idempotent_and_describe_reports(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamer topics create|describe` against the real broker, with explicit names."""
    names = [f"cli-{uuid.uuid4().hex[:8]}", f"cli-{uuid.uuid4().hex[:8]}"]
    flags = ["--bootstrap-servers", kafka_bootstrap, "--partitions", "2"]
    for name in names:
        flags += ["--topic", name]
    assert cli_main(["topics", "create", *flags]) == 0
    assert capsys.readouterr().out.count("created  ") == 2
    assert cli_main(["topics", "create", *flags]) == 0
    assert capsys.readouterr().out.count("exists   ") == 2
    assert cli_main(["topics", "describe", *flags]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: partitions=2 replication=1" in out for name in names)
    missing = ["--bootstrap-servers", kafka_bootstrap, "--topic", f"absent-{uuid.uuid4().hex}"]
    assert cli_main(["topics", "describe", *missing]) == 1


async def test_auto_create_is_disabled(kafka_bootstrap: str) -> None:
    """A typo in a topic name must fail loudly, not create a topic nobody reads."""
    name = f"never-created-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises((KafkaError, TimeoutError)):
            await asyncio.wait_for(producer.send_and_wait(name, b"x"), 10)
    finally:
        await producer.stop()
    assert name not in await describe_topics(kafka_bootstrap)


async def test_idempotent_producer_round_trip(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """acks=all + idempotence: the broker grants a producer id; every record arrives once."""
    topic = await topic_factory(partitions=2)
    producer = _producer(kafka_bootstrap)
    await producer.start()
    try:
        txn = producer._txn_manager
        assert txn is not None and txn.producer_id >= 0, "broker granted no producer id"
        sends = [
            await producer.send(topic, key=f"k{i}".encode(), value=f"v{i:03d}".encode())
            for i in range(100)
        ]
        metadata = await asyncio.wait_for(asyncio.gather(*sends), WAIT_S)
    finally:
        await producer.stop()
    assert {m.partition for m in metadata} == {0, 1}

    consumer = _consumer(kafka_bootstrap)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        records = await _drain(consumer, 100)
    finally:
        await consumer.stop()
    assert _values(records) == [f"v{i:03d}".encode() for i in range(100)]
    for partition in (0, 1):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets))), "gap or duplicate in a partition"
    # Same key, same partition: the ordering the results topics rely on.
    by_key = {r.key: r.partition for r in records}
    assert all(by_key[r.key] == r.partition for r in records)


async def test_offsets_for_times(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    """Replay by time: the first offset whose timestamp is >= the asked time."""
    topic = await topic_factory(partitions=1)
    # two hours ago: older records are deleted by the broker's retention check (24 h, every 60 s)
    base = (int(time.time() * 1000) // 60_000 - 120) * 60_000
    producer = _producer(kafka_bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(
                topic, f"e{i}".encode(), partition=0, timestamp_ms=base + 1000 * i
            )
    finally:
        await producer.stop()
    tp = TopicPartition(topic, 0)
    consumer = _consumer(kafka_bootstrap)
    await consumer.start()
    try:
        found = await consumer.offsets_for_times({tp: base + 3500})
        exact = await consumer.offsets_for_times({tp: base + 7000})
        before = await consumer.offsets_for_times({tp: base - 1})
        after = await consumer.offsets_for_times({tp: base + 10_000})
        end = await consumer.end_offsets([tp])
    finally:
        await consumer.stop()
    assert (found[tp].offset, found[tp].timestamp) == (4, base + 4000)
    assert (exact[tp].offset, exact[tp].timestamp) == (7, base + 7000)
    assert before[tp].offset == 0
    assert after[tp] is None
    assert end[tp] == 10


async def test_group_offsets_listed_after_commit(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """What a group committed is visible to the admin client (lag monitoring, replay)."""
    topic = await topic_factory(partitions=2)
    group = f"group-{uuid.uuid4().hex[:8]}"
    producer = _producer(kafka_bootstrap)
    await producer.start()
    try:
        for i in range(12):
            await producer.send_and_wait(topic, f"m{i}".encode(), partition=i % 2)
    finally:
        await producer.stop()
    consumer = _consumer(kafka_bootstrap, topic, group_id=group)
    await consumer.start()
    try:
        records = await _consume(consumer, 12)
        assert len(records) == 12
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        # Commit a prefix only, with metadata: what the offset watermark does.
        await consumer.commit({tp0: OffsetAndMetadata(4, "watermark"), tp1: 6})
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        groups = await admin.list_consumer_groups()
    finally:
        await admin.close()
    assert offsets[tp0].offset == 4 and offsets[tp0].metadata == "watermark"
    assert offsets[tp1].offset == 6
    assert group in {g[0] for g in groups}


@pytest.mark.slow
async def test_consumer_resumes_from_committed_offset_after_broker_restart(
    dedicated_kafka: LocalKafka,
) -> None:
    """Produce N, consume and commit K, restart the broker, produce M: the group gets N-K+M."""
    bootstrap = dedicated_kafka.bootstrap_servers
    topic, group = f"restart-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    n, k, m = 40, 15, 20
    await ensure_topics(bootstrap, {topic: 2})

    producer = _producer(bootstrap)
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, f"before-{i:02d}".encode(), key=str(i).encode())
    finally:
        await producer.stop()

    consumer = _consumer(bootstrap, topic, group_id=group)
    await consumer.start()
    try:
        first = await _consume(consumer, k)
        assert len(first) == k
        committed: dict[TopicPartition, int] = {}
        for record in first:
            tp = TopicPartition(record.topic, record.partition)
            committed[tp] = max(committed.get(tp, 0), record.offset + 1)
        await consumer.commit(committed)
    finally:
        await consumer.stop()

    old_pid = dedicated_kafka.pid
    # Blocking on purpose: no client is running, and the broker must be started from this
    # (the test's main) thread so it still dies with the test process.
    dedicated_kafka.restart()
    assert dedicated_kafka.pid != old_pid
    assert dedicated_kafka.bootstrap_servers == bootstrap

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        after_restart = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert {tp: meta.offset for tp, meta in after_restart.items()} == committed

    producer = _producer(bootstrap)
    await producer.start()
    try:
        for i in range(m):
            await producer.send_and_wait(topic, f"after-{i:02d}".encode(), key=str(i).encode())
    finally:
        await producer.stop()

    consumer = _consumer(bootstrap, topic, group_id=group)
    await consumer.start()
    try:
        rest = await _drain(consumer, n - k + m)
    finally:
        await consumer.stop()
    all_values = {f"before-{i:02d}".encode() for i in range(n)} | {
        f"after-{i:02d}".encode() for i in range(m)
    }
    expected = sorted(all_values - {r.value for r in first})
    assert _values(rest) == expected, "lost or duplicated records across the restart"
    for tp, offset in committed.items():
        resumed = [r.offset for r in rest if r.partition == tp.partition]
        assert min(resumed) == offset, f"{tp} did not resume at its committed offset"


@pytest.mark.slow
def test_failed_start_says_why_and_leaves_nothing_running() -> None:
    """A taken port: the error names the cause from the broker log; no JVM, no temp dir."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        kafka = LocalKafka(port=squatter.getsockname()[1], start_timeout_s=60)
        pids: list[int] = []
        real_stop = kafka.stop

        def recording_stop() -> None:
            if kafka.pid is not None:
                pids.append(kafka.pid)
            real_stop()

        kafka.stop = recording_stop  # type: ignore[method-assign]
        with pytest.raises(BrokerStartError, match="Address already in use"):
            kafka.start()
    assert not kafka.is_running()
    assert all(not pid_is_kafka(pid) for pid in pids)
    assert kafka._workdir is None, "the failed start kept its temporary directory"
