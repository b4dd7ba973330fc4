"""A batch the service cannot read stops its own partition only, loses nothing, and says so.

The service runs as a real process against the real broker, started without the lz4 codec (a
`sitecustomize` on its path makes aiokafka's `has_lz4()` false: what every install was before
cramjam was locked, and what any unreadable batch looks like to the guard). Partition 1 gets
plain records, then one lz4 batch, then plain records; partition 0 plain records around it.
Before the fix the whole route stopped, `/readyz` stayed 200 and nothing said why.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.pipeline_harness import (
    ServiceProcess,
    collect,
    create_topics,
    query_event,
    read_all,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NO_LZ4 = "import aiokafka.codec\naiokafka.codec.has_lz4 = lambda: False\n"


async def _send(bootstrap: str, topic: str, partition: int, ids: list[str], codec: str | None):
    """One flushed batch per call, so the lz4 records form a batch of their own."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=50)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, query_event(i, f"usb cable {i}"), key=i.encode(),
                                partition=partition)
            for i in ids
        ]  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def _layout(bootstrap: str, topic: str) -> dict[str, list[str]]:
    """p0: 5 + 5 plain; p1: 5 plain, 5 lz4 (offsets 5..9), 5 plain."""
    ids = {
        "p0_before": _ids("p0b-", 5), "p1_before": _ids("p1b-", 5), "p1_lz4": _ids("p1z-", 5),
        "p1_after": _ids("p1a-", 5), "p0_after": _ids("p0a-", 5),
    }  # fmt: skip
    await _send(bootstrap, topic, 0, ids["p0_before"], None)
    await _send(bootstrap, topic, 1, ids["p1_before"], None)
    await _send(bootstrap, topic, 1, ids["p1_lz4"], "lz4")
    await _send(bootstrap, topic, 1, ids["p1_after"], None)
    await _send(bootstrap, topic, 0, ids["p0_after"], None)
    return ids


@pytest.fixture
def no_lz4_service(kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path):
    """Start the service without the lz4 codec; stopped at teardown."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_LZ4)
    started: list[ServiceProcess] = []

    def start(topics, **env: str) -> ServiceProcess:
        svc = ServiceProcess(
            bootstrap=kafka_bootstrap, artifact=tiny_cpu_artifact, topics=topics,
            log_path=tmp_path / "svc.log", routes="intent",
            extra_env={"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[2]}", **env},
        )  # fmt: skip
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


async def test_hold_stops_only_the_partition_and_says_so(kafka_bootstrap, no_lz4_service):
    topics = await create_topics(kafka_bootstrap, partitions=2)
    ids = await _layout(kafka_bootstrap, topics.queries)
    # Held longer than 3 s: unready. Not 0, or /readyz could turn 503 before the harness's
    # start() saw it ready (the first fetch meets the batch within milliseconds).
    svc = no_lz4_service(topics, STREAMER_UNREADABLE_READY_S="3")
    readable = set(ids["p0_before"] + ids["p0_after"] + ids["p1_before"])
    seen = await collect(kafka_bootstrap, topics.intents, readable, timeout_s=60, settle_s=3)
    assert readable <= seen.keys()  # the other partition and what came before the batch
    assert not (set(ids["p1_lz4"] + ids["p1_after"]) & seen.keys())  # held: nothing skipped

    status, body = 0, ""
    for _ in range(150):
        status, body = svc.http("/readyz")
        if status == 503:
            break
        await asyncio.sleep(0.2)
    assert status == 503
    assert f"{topics.queries}[1]@5 (codec)" in body
    _, metrics = svc.http("/metrics")
    assert 'reason="codec"' in metrics and 'policy="hold"' in metrics
    assert "streamer_partition_stalled_since_seconds{" in metrics
    log = svc.log_path.read_text()
    assert "partition held at an unreadable batch" in log and "lz4" in log
    assert not [d for d in await read_all(kafka_bootstrap, topics.dlq, timeout_s=3)]
    svc.signal(signal.SIGTERM)
    assert svc.wait(timeout=60) == 0
    drained = [line for line in svc.log_path.read_text().splitlines() if '"drained"' in line]
    assert drained and f"{topics.queries}[1]@5 (codec)" in drained[-1]


async def test_skip_dead_letters_the_range_and_reads_on(kafka_bootstrap, no_lz4_service):
    topics = await create_topics(kafka_bootstrap, partitions=2)
    ids = await _layout(kafka_bootstrap, topics.queries)
    svc = no_lz4_service(topics, STREAMER_UNREADABLE_BATCH_POLICY="skip")
    readable = set(ids["p0_before"] + ids["p0_after"] + ids["p1_before"] + ids["p1_after"])
    seen = await collect(kafka_bootstrap, topics.intents, readable, timeout_s=60, settle_s=2)
    assert readable <= seen.keys()
    assert not (set(ids["p1_lz4"]) & seen.keys())
    letters = await read_all(kafka_bootstrap, topics.dlq, timeout_s=10)
    assert [(d["error_code"], d["source_partition"], d["source_offset"], d["source_offset_end"])
            for d in letters] == [("UNREADABLE_BATCH", 1, 5, 10)]  # fmt: skip
    assert "lz4" in letters[0]["reason"]
    assert svc.http("/readyz")[0] == 200
    svc.signal(signal.SIGTERM)
    assert svc.wait(timeout=60) == 0


async def test_tombstones_and_oversized_records_never_stall(kafka_bootstrap, no_lz4_service):
    """A null value is dead-lettered as TOMBSTONE; a record over max_partition_fetch_bytes is
    still read (brokers return the first batch whole, KIP-74) and answered."""
    topics = await create_topics(kafka_bootstrap, partitions=1)
    big = query_event("big-1", "usb cable " + "x" * 6000)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.queries, None, key=b"gone-1")
        await producer.send_and_wait(topics.queries, big, key=None)
        await producer.send_and_wait(topics.queries, query_event("after-1", "kindle"), key=None)
    finally:
        await producer.stop()
    no_lz4_service(topics, STREAMER_MAX_PARTITION_FETCH_BYTES="1024")
    seen = await collect(kafka_bootstrap, topics.intents, {"big-1", "after-1"}, timeout_s=60)
    assert {"big-1", "after-1"} <= seen.keys()
    letters = await read_all(kafka_bootstrap, topics.dlq, timeout_s=10)
    assert [(d["error_code"], d["source_offset"]) for d in letters] == [("TOMBSTONE", 0)]
