"""Kafka clients that are not aiokafka, for the interop tests (tests/integration/test_interop.py).

The service speaks aiokafka; its upstreams and downstreams do not. These helpers drive the two
clients most services around it use: librdkafka (confluent-kafka) and Apache Kafka's own Java
clients, as the console producer and consumer shipped in the Kafka distribution the project
already installs (`streamer.kafka.install`, kafka-tools jar). `batches` reads the raw record
batches back from the broker, so a test can show which codec really travelled on the wire.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
from confluent_kafka import TopicPartition as RdTopicPartition

from streamer.kafka.install import install
from streamer.kafka.local_broker import find_java

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
CODEC_IDS = dict(enumerate(CODECS))  # the record batch's attributes & 0x07
LOG4J = Path(__file__).with_name("java_clients_log4j2.properties")
NULL = "<null>"
"""The Java console producer's null.marker: a key or value written as this is sent as null."""

Header = tuple[str, bytes | None]


# --------------------------------------------------------------------------------- librdkafka


def rdkafka_produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, list[Header]]],
    codec: str,
    *,
    partition: int | None = None,
    config: dict[str, object] | None = None,
) -> list[tuple[int, int]]:
    """Send (key, value, headers) with librdkafka; returns each record's (partition, offset).

    Raises if any record is not acknowledged (acks=all, idempotent, as a careful upstream).
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "enable.idempotence": True,
            "linger.ms": 20,
            **(config or {}),
        }
    )
    placed: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[str] = []

    def delivered(i: int):  # type: ignore[no-untyped-def]
        def report(err, msg) -> None:  # type: ignore[no-untyped-def]
            if err is not None:
                errors.append(str(err))
            else:
                placed[i] = (msg.partition(), msg.offset())

        return report

    for i, (key, value, headers) in enumerate(records):
        kwargs: dict[str, object] = {"key": key, "value": value, "headers": headers}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, on_delivery=delivered(i), **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0 and not errors, f"librdkafka: {left} undelivered, errors {errors[:3]}"
    assert all(p is not None for p in placed)
    return [p for p in placed if p is not None]


@dataclass(frozen=True)
class Seen:
    """One record as a downstream reader saw it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]


def rdkafka_read(
    bootstrap: str,
    topic: str,
    until: Iterable[str] = (),
    *,
    timeout_s: float = 120.0,
    settle_s: float = 1.0,
    read_committed: bool = True,
    event_id: bool = True,
) -> list[Seen]:
    """Every record of `topic` from the beginning, read by librdkafka (no consumer group).

    Reads until every id in `until` was seen (by the value's event_id, or by key when
    `event_id` is False) and then `settle_s` more, so late duplicates are counted too; or
    until `timeout_s`. With no `until`, reads until the topic is idle for `settle_s`.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "interop-reader",  # required by librdkafka; assign() joins no group
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.wait.max.ms": 50,
        }
    )
    wanted = set(until)
    out: list[Seen] = []
    found: set[str] = set()
    try:
        meta = consumer.list_topics(topic, timeout=30)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([RdTopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            done = wanted <= found
            if done and time.monotonic() - quiet_since >= settle_s:
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise RuntimeError(f"librdkafka read of {topic}: {msg.error()}")
            value = msg.value()
            out.append(
                Seen(msg.partition(), msg.offset(), msg.key(), value, dict(msg.headers() or []))
            )
            if event_id:
                found.add(event_id_of(value))
            elif msg.key() is not None:
                found.add(msg.key().decode())
            if not wanted or wanted <= found:
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    return out


def event_id_of(value: bytes | None) -> str:
    """The event id in a JSON value; "" for anything else (a tombstone, a bad record)."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return ""
    return str(doc.get("event_id", "")) if isinstance(doc, dict) else ""


# ----------------------------------------------------------------------------- Java console


def _java(main_class: str, args: list[str], stdin: str | None, timeout_s: float) -> str:
    """Run one of the Kafka distribution's tools on Java 17+; its stdout (raises on failure)."""
    cmd = [
        find_java(),
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # short-lived: start time dominates (as the test broker)
        f"-Dlog4j2.configurationFile={LOG4J}",
        "-cp",
        install().classpath,
        main_class,
        *args,
    ]
    proc = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{main_class} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def java_line(key: str | None, value: str | None, headers: dict[str, str]) -> str:
    """One input line of the console producer: `h1:v1,h2:v2<TAB>key<TAB>value`."""
    assert headers, "with parse.headers every line needs a header"
    head = ",".join(f"{k}:{v}" for k, v in headers.items())
    return f"{head}\t{NULL if key is None else key}\t{NULL if value is None else value}"


def java_produce(bootstrap: str, topic: str, lines: list[str], codec: str) -> None:
    """Send lines (`java_line`) with org.apache.kafka.tools.ConsoleProducer, acks=all."""
    args = [
        "--bootstrap-server", bootstrap, "--topic", topic,
        "--property", "parse.key=true", "--property", "parse.headers=true",
        "--property", f"null.marker={NULL}",
        "--producer-property", "acks=all", "--producer-property", "linger.ms=20",
    ]  # fmt: skip
    if codec != "none":
        args += ["--compression-codec", codec]
    _java("org.apache.kafka.tools.ConsoleProducer", args, "\n".join(lines) + "\n", 120)


def java_consume(bootstrap: str, topic: str, *, idle_ms: int = 5000) -> list[Seen]:
    """Every committed record of `topic`, read by org.apache.kafka.tools.consumer.ConsoleConsumer
    with isolation.level=read_committed (what a downstream of exactly-once must set); it exits
    once no record came for `idle_ms`."""
    args = [
        "--bootstrap-server", bootstrap, "--topic", topic, "--from-beginning",
        "--timeout-ms", str(idle_ms),
        "--consumer-property", "isolation.level=read_committed",
        "--property", "print.partition=true", "--property", "print.offset=true",
        "--property", "print.key=true", "--property", "print.headers=true",
        "--property", f"null.literal={NULL}",
    ]  # fmt: skip
    out = _java("org.apache.kafka.tools.consumer.ConsoleConsumer", args, None, 180)
    seen = []
    for line in out.splitlines():
        part, offset, head, key, value = line.split("\t", 4)
        headers: dict[str, bytes | None] = {}
        if head != "NO_HEADERS":
            for item in head.split(","):
                k, _, v = item.partition(":")
                headers[k] = None if v == NULL else v.encode()
        seen.append(
            Seen(
                int(part.removeprefix("Partition:")),
                int(offset.removeprefix("Offset:")),
                None if key == NULL else key.encode(),
                None if value == NULL else value.encode(),
                headers,
            )
        )
    return seen


# ---------------------------------------------------------------------------- raw batches


@dataclass(frozen=True)
class Batch:
    """One record batch as the broker stores it."""

    partition: int
    base_offset: int
    codec: str
    records: int
    control: bool


async def batches(
    bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]], *, max_bytes: int = 16 << 20
) -> list[Batch]:
    """The stored batches of `topic` holding offsets first..last of each partition.

    Read with a plain Fetch request (no consumer: a consumer decompresses and hides the
    batch), read_uncommitted so aborted transactions' batches are there too.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    out: list[Batch] = []
    try:
        await client.add_topic(topic)
        for partition, (first, last) in sorted(ranges.items()):
            offset = first
            while offset <= last:
                leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                request = FetchRequest(
                    500, 1, max_bytes, 0, [(topic, [(partition, offset, max_bytes)])]
                )
                response = await client.send(leader, request)
                ((_, parts),) = response.topics
                ((_, error, _highwater, *rest),) = parts
                assert error == 0, f"fetch {topic}/{partition}@{offset}: error {error}"
                records = MemoryRecords(rest[-1])
                if not records.has_next():
                    break
                while records.has_next() and offset <= last:
                    batch = records.next_batch()
                    if batch is None:
                        break
                    out.append(
                        Batch(
                            partition,
                            batch.base_offset,
                            CODEC_IDS[batch.compression_type],
                            batch.last_offset_delta + 1,
                            batch.is_control_batch,
                        )
                    )
                    offset = batch.next_offset
    finally:
        await client.close()
    return out


def offset_ranges(placed: Iterable[tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """{partition: (lowest, highest offset)} of delivered records."""
    ranges: dict[int, tuple[int, int]] = {}
    for partition, offset in placed:
        lo, hi = ranges.get(partition, (offset, offset))
        ranges[partition] = (min(lo, offset), max(hi, offset))
    return ranges


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: high watermark} (the next offset to be written), asked through librdkafka."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "interop-reader"})
    try:
        meta = consumer.list_topics(topic, timeout=30)
        return {
            p: consumer.get_watermark_offsets(RdTopicPartition(topic, p), timeout=30)[1]
            for p in sorted(meta.topics[topic].partitions)
        }
    finally:
        consumer.close()


def written_between(before: dict[int, int], after: dict[int, int]) -> dict[int, tuple[int, int]]:
    """The offset ranges written between two `end_offsets` readings."""
    return {p: (before.get(p, 0), end - 1) for p, end in after.items() if end > before.get(p, 0)}
