"""End-to-end tests of `streamer run` against the real broker: nothing lost under every failure.

Each test creates its own topics, runs the real service process (with real worker processes)
on the tiny model, and checks results by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest

from streamer.records.samples import BAD_RECORDS
from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    assert_dead_letter_shape,
    collect,
    create_topics,
    pair_event,
    produce,
    query_event,
    read_all,
    shm_leftovers,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _queries(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}{i}".encode(), query_event(f"{prefix}{i}", QUERIES[i % len(QUERIES)] + f" {i}"))
        for i in range(n)
    ]


def _pairs(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"{prefix}{i}".encode(), pair_event(f"{prefix}{i}", i)) for i in range(n)]


@pytest.fixture
def service_factory(kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path):
    """Start services on demand; every one is stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(topics, *, name: str = "svc", **kwargs) -> ServiceProcess:
        svc = ServiceProcess(
            bootstrap=kafka_bootstrap,
            artifact=tiny_cpu_artifact,
            topics=topics,
            log_path=tmp_path / f"{name}.log",
            **kwargs,
        )
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


async def test_zero_loss_both_routes(kafka_bootstrap, service_factory):
    """20,000 queries and 5,000 pairs with unique ids in -> exactly one result per id out."""
    topics = await create_topics(kafka_bootstrap, partitions=4)
    svc = service_factory(topics)
    queries, pairs = _queries("q", 20_000), _pairs("p", 5_000)
    await asyncio.gather(
        produce(kafka_bootstrap, topics.queries, queries),
        produce(kafka_bootstrap, topics.pairs, pairs),
    )
    q_seen, p_seen = await asyncio.gather(
        collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 300),
        collect(kafka_bootstrap, topics.duplicates, {k.decode() for k, _ in pairs}, 300),
    )
    missing_q = {k.decode() for k, _ in queries} - q_seen.keys()
    missing_p = {k.decode() for k, _ in pairs} - p_seen.keys()
    dup_q = sum(c - 1 for c in q_seen.values())
    dup_p = sum(c - 1 for c in p_seen.values())
    print(f"queries: {len(q_seen)} ids, {dup_q} duplicates; pairs: {len(p_seen)} ids, {dup_p} dup")
    assert not missing_q and not missing_p, svc.log_tail()
    assert dup_q == 0 and dup_p == 0
    assert svc.metric("streamer_results_out_total") == 25_000


async def test_malformed_records_go_to_dlq(kafka_bootstrap, service_factory):
    """Every bad-input class goes to the DLQ with its code and offset; good ones all answered."""
    topics = await create_topics(kafka_bootstrap, partitions=1)
    svc = service_factory(topics)
    records: list[tuple[bytes | None, bytes]] = []
    expected_bad: list[str] = []
    good_ids = set()
    for i, (code, _desc, raw) in enumerate(BAD_RECORDS):
        records.append((None, raw))
        expected_bad.append(code.value)
        eid = f"good-{i}"
        records.append((eid.encode(), query_event(eid, QUERIES[i % len(QUERIES)])))
        good_ids.add(eid)
    await produce(kafka_bootstrap, topics.queries, records)
    seen = await collect(kafka_bootstrap, topics.intents, good_ids, 120)
    assert good_ids <= seen.keys(), svc.log_tail()
    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < len(expected_bad) and time.monotonic() < deadline:
        letters = await read_all(kafka_bootstrap, topics.dlq)
    for letter in letters:
        assert_dead_letter_shape(letter)
        assert letter["source_topic"] == topics.queries
    # One partition, bad record i at offset 2*i: each letter points at its source record.
    by_offset = {letter["source_offset"]: letter["error_code"] for letter in letters}
    assert by_offset == {2 * i: code for i, code in enumerate(expected_bad)}
    assert svc.proc is not None and svc.proc.poll() is None  # never stopped


async def test_worker_sigkill_loses_nothing(kafka_bootstrap, service_factory):
    """Kill the worker process several times mid-stream: every id still answered."""
    topics = await create_topics(kafka_bootstrap, partitions=2)
    svc = service_factory(topics, routes="intent")
    queries = _queries("k", 6_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=1_000))
    kills = 0
    for _ in range(3):
        await asyncio.sleep(1.2)
        pids = svc.worker_pids()
        assert pids, svc.log_tail()
        for pid in pids:
            with_signal(pid, signal.SIGKILL)
        kills += 1
    await producing
    seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 180)
    missing = {k.decode() for k, _ in queries} - seen.keys()
    assert not missing, f"{len(missing)} missing\n{svc.log_tail()}"
    assert svc.metric("streamer_worker_restarts") >= kills


async def test_service_sigkill_and_restart_loses_nothing(kafka_bootstrap, service_factory):
    """SIGKILL the whole service mid-stream and start it again: none missing (dups counted)."""
    topics = await create_topics(kafka_bootstrap, partitions=2)
    svc = service_factory(topics, name="first", routes="intent")
    queries = _queries("r", 5_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=1_500))
    await asyncio.sleep(1.5)
    svc.signal(signal.SIGKILL)
    svc.wait(10)
    await producing
    service_factory(topics, name="second", routes="intent")
    seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 180)
    missing = {k.decode() for k, _ in queries} - seen.keys()
    dups = sum(c - 1 for c in seen.values())
    print(f"after SIGKILL+restart: {len(seen)} ids, {dups} duplicates")
    assert not missing


async def test_two_instances_one_stops_gracefully(kafka_bootstrap, service_factory):
    """Two instances in a group; SIGTERM one mid-stream: it exits 0, survivor takes over."""
    topics = await create_topics(kafka_bootstrap, partitions=4)
    a = service_factory(topics, name="a", routes="intent")
    service_factory(topics, name="b", routes="intent")
    queries = _queries("g", 6_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=1_500))
    await asyncio.sleep(2.0)
    a.signal(signal.SIGTERM)
    assert a.wait(40) == 0, a.log_tail()
    await producing
    seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 180)
    missing = {k.decode() for k, _ in queries} - seen.keys()
    assert not missing


async def test_sigterm_drains_exits_zero_and_leaves_no_shm(kafka_bootstrap, service_factory):
    """SIGTERM under load: drain within the deadline, exit 0, no /dev/shm leftovers."""
    before = set(shm_leftovers())
    topics = await create_topics(kafka_bootstrap, partitions=2)
    svc = service_factory(topics)
    queries = _queries("s", 3_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=1_500))
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    svc.signal(signal.SIGTERM)
    assert svc.wait(30) == 0, svc.log_tail()
    print(f"drained and exited in {time.monotonic() - t0:.2f} s")
    await producing
    assert set(shm_leftovers()) - before == set()
    # Whatever it had not finished is still there for the next instance: none missing.
    service_factory(topics, name="next")
    seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 120)
    assert {k.decode() for k, _ in queries} <= seen.keys()


async def test_startup_fails_fast_when_topics_missing(kafka_bootstrap, tiny_cpu_artifact, tmp_path):
    """Missing topics: exit code 3 and a message naming them, not a hang."""
    from tests.integration.pipeline_harness import Topics

    topics = Topics("nope-q", "nope-p", "nope-i", "nope-d", "nope-dlq")
    svc = ServiceProcess(kafka_bootstrap, tiny_cpu_artifact, topics, tmp_path / "svc.log")
    with pytest.raises(RuntimeError, match="exited 3"):
        svc.start()
    assert "nope-q" in svc.log_tail()


def with_signal(pid: int, sig: int) -> None:
    """Signal a pid that may already be gone."""
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def test_an_emulated_device_serves_labelled_results(kafka_bootstrap, service_factory):
    """STREAMER_EMULATE: the same pipeline, no model; every result says it was emulated."""
    from aiokafka import AIOKafkaConsumer

    topics = await create_topics(kafka_bootstrap, partitions=2)
    svc = service_factory(topics, name="emulated", extra_env={"STREAMER_EMULATE": "h200"})
    records = [
        (f"e{i}".encode(), query_event(f"e{i}", QUERIES[i % len(QUERIES)])) for i in range(40)
    ]
    await produce(kafka_bootstrap, topics.queries, records)
    seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in records}, 60)
    assert set(seen) == {k.decode() for k, _ in records}
    consumer = AIOKafkaConsumer(
        topics.intents, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000, max_records=5)
        headers = [dict(m.headers) for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    assert headers and all(h["device"] == b"emulated-h200" for h in headers)
    _, metrics = svc.http("/metrics")
    assert 'target="emulated-h200"' in metrics and 'variant="emulated"' in metrics


# The cpu default: the model in the service process (STREAMER_EXECUTOR=auto -> inprocess). The
# harness pins the worker-process path (what accelerators run and the worker-kill tests need);
# these hold the shipped cpu default to the guarantees that involve no worker process.
IN_PROCESS = {"STREAMER_EXECUTOR": "auto"}


async def test_in_process_default_loses_nothing_on_both_routes(kafka_bootstrap, service_factory):
    topics = await create_topics(kafka_bootstrap, partitions=4)
    svc = service_factory(topics, extra_env=IN_PROCESS)
    assert svc.worker_pids() == [], "the cpu default runs no worker process"
    queries = _queries("q", 5_000)
    pairs = _pairs("p", 1_000)
    await asyncio.gather(
        produce(kafka_bootstrap, topics.queries, queries),
        produce(kafka_bootstrap, topics.pairs, pairs),
    )
    q_seen, p_seen = await asyncio.gather(
        collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 300),
        collect(kafka_bootstrap, topics.duplicates, {k.decode() for k, _ in pairs}, 300),
    )
    assert {k.decode() for k, _ in queries} == q_seen.keys(), svc.log_tail()
    assert {k.decode() for k, _ in pairs} == p_seen.keys(), svc.log_tail()
    assert sum(q_seen.values()) + sum(p_seen.values()) == 6_000, "no duplicates"
    # The tail attribution is fed on this path too (the runner thread stamps its run).
    assert svc.metric("streamer_tail_events_total") > 0


async def test_in_process_default_drains_on_sigterm_and_survives_sigkill(
    kafka_bootstrap, service_factory
):
    before = set(shm_leftovers())
    topics = await create_topics(kafka_bootstrap, partitions=2)
    svc = service_factory(topics, name="first", routes="intent", extra_env=IN_PROCESS)
    queries = _queries("s", 4_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=1_500))
    await asyncio.sleep(1.0)
    svc.signal(signal.SIGTERM)
    assert svc.wait(30) == 0, svc.log_tail()
    assert set(shm_leftovers()) - before == set()
    second = service_factory(topics, name="second", routes="intent", extra_env=IN_PROCESS)
    await asyncio.sleep(0.5)
    second.signal(signal.SIGKILL)
    second.wait(10)
    await producing
    service_factory(topics, name="third", routes="intent", extra_env=IN_PROCESS)
    seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 180)
    assert {k.decode() for k, _ in queries} <= seen.keys()
