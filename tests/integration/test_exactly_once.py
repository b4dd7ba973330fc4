"""Exactly-once delivery (`STREAMER_DELIVERY=exactly-once`) against the real broker.

Every test runs the real `streamer run` process(es) on the tiny model and reads the results as a
downstream of exactly-once must: `isolation_level=read_committed`, counting event ids. Under
every fault, each input id has exactly one result: 0 missing and 0 duplicates. Where it shows
that the fault really left uncommitted work behind, the read_uncommitted count is printed
beside it (records of aborted transactions: there in the log, never visible).

The at-least-once versions of these faults are in test_pipeline.py and test_faults*.py.
Deadlines are generous (a 2-core machine shared with other jobs); nothing is timed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streamer.kafka.probe import run_in_fresh_loop
from tests.integration.fault_harness import LoadGenerator, wait_for
from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    Topics,
    collect,
    create_topics,
    pair_event,
    produce,
    query_event,
)
from tests.integration.test_pipeline import with_signal

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(900)]

EOS = {
    "STREAMER_DELIVERY": "exactly-once",
    # Shorter than the default 10 s so that a killed instance's partitions move on sooner.
    "STREAMER_SESSION_TIMEOUT_MS": "6000",
}


def _queries(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}{i}".encode(), query_event(f"{prefix}{i}", QUERIES[i % len(QUERIES)] + f" {i}"))
        for i in range(n)
    ]


LONG = " ".join(f"braided nylon usb-c cable {w} with aluminium connectors" for w in range(40))


def _pairs(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    """Pairs of mixed length: every third has a long description, so it is batched in a longer
    sequence bucket and completes out of order with the short pairs fetched around it."""
    out = []
    for i in range(n):
        eid = f"{prefix}{i}"
        if i % 3:
            out.append((eid.encode(), pair_event(eid, i)))
            continue
        doc = orjson.loads(pair_event(eid, i))
        doc["left"]["description"] = LONG
        doc["right"]["description"] = LONG
        out.append((eid.encode(), orjson.dumps(doc)))
    return out


def _ids(records: list[tuple[bytes, bytes]]) -> set[str]:
    return {k.decode() for k, _ in records}


def _figures(expected: set[str], seen: Counter[str]) -> dict[str, int]:
    return {
        "events": len(expected),
        "missing": len(expected - seen.keys()),
        "duplicates": sum(c - 1 for c in seen.values()),
        "unexpected": len(seen.keys() - expected),
    }


async def _committed_and_all(
    bootstrap: str, topic: str, expected: set[str], timeout_s: float = 240
) -> tuple[Counter[str], Counter[str]]:
    """(read_committed ids, read_uncommitted ids) of a result topic."""
    committed = await collect(
        bootstrap, topic, expected, timeout_s, settle_s=3, isolation_level="read_committed"
    )
    everything = await collect(bootstrap, topic, expected, 30, settle_s=1)
    return committed, everything


def _route_metric(svc: ServiceProcess, name: str, route: str) -> float:
    """One route's sample of a metric (0 when absent)."""
    _, text = svc.http("/metrics")
    for line in text.splitlines():
        if line.startswith(f'{name}{{route="{route}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _until(
    predicate: Callable[[], bool], svc: ServiceProcess, timeout_s: float = 120
) -> None:
    """Poll (off the event loop: the metric read blocks) until predicate() holds."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "never reached:\n" + svc.log_tail()
        await asyncio.sleep(0.1)


@pytest.fixture
def service_factory(kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path):
    """Start exactly-once services on demand; every one is stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(topics: Topics, *, name: str = "svc", wait: bool = True, **kwargs) -> ServiceProcess:
        env = {**EOS, **kwargs.pop("extra_env", {})}
        svc = ServiceProcess(
            bootstrap=kafka_bootstrap, artifact=tiny_cpu_artifact, topics=topics,
            log_path=tmp_path / f"{name}.log", extra_env=env, **kwargs,
        )  # fmt: skip
        started.append(svc)
        return svc.start() if wait else svc.launch()

    yield start
    for svc in started:
        svc.stop()


async def test_both_routes_out_of_order_exactly_once(kafka_bootstrap, service_factory):
    """Queries and pairs (pairs complete out of order: grouped by length) with malformed
    records among them: every id exactly once under read_committed, every bad record exactly
    once in the DLQ, and the committed offsets cover all input."""
    topics = await create_topics(kafka_bootstrap, partitions=2)
    svc = service_factory(topics)
    queries, pairs = _queries("q", 3_000), _pairs("p", 800)
    bad = [(None, b"{not json")] * 50
    await asyncio.gather(
        produce(kafka_bootstrap, topics.queries, queries[:1500] + bad + queries[1500:]),
        produce(kafka_bootstrap, topics.pairs, pairs),
    )
    q_seen = await collect(
        kafka_bootstrap, topics.intents, _ids(queries), 240, settle_s=2,
        isolation_level="read_committed",
    )  # fmt: skip
    p_seen = await collect(
        kafka_bootstrap, topics.duplicates, _ids(pairs), 240, settle_s=2,
        isolation_level="read_committed",
    )  # fmt: skip
    q, p = _figures(_ids(queries), q_seen), _figures(_ids(pairs), p_seen)
    deadline = time.monotonic() + 60
    while svc.metric("streamer_dlq_total") < 50 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    from tests.integration.pipeline_harness import read_all

    letters = await read_all(kafka_bootstrap, topics.dlq, isolation_level="read_committed")
    print(f"exactly-once both routes: queries {q}, pairs {p}, dead letters {len(letters)}")
    assert q["missing"] == 0 and p["missing"] == 0, svc.log_tail()
    assert q["duplicates"] == 0 and p["duplicates"] == 0
    assert len(letters) == 50
    assert svc.metric("streamer_transactions_total") > 0


async def test_worker_sigkill_exactly_once(kafka_bootstrap, service_factory):
    """SIGKILL the worker three times under load: no id missing, none twice."""
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
    seen = await collect(
        kafka_bootstrap, topics.intents, _ids(queries), 240, settle_s=3,
        isolation_level="read_committed",
    )  # fmt: skip
    figures = _figures(_ids(queries), seen)
    print(f"exactly-once, worker SIGKILL x{kills}: {figures}")
    assert figures["missing"] == 0, svc.log_tail()
    assert figures["duplicates"] == 0
    assert svc.metric("streamer_worker_restarts") >= kills


async def test_service_sigkill_and_restart_exactly_once(kafka_bootstrap, service_factory):
    """SIGKILL the service mid-stream on both routes (pairs complete out of order; open
    transactions are left behind) and start it again: the new instance's producers abort
    them; none missing, none twice."""
    topics = await create_topics(kafka_bootstrap, partitions=2)
    # Long pairs wait in their own bucket's batch (up to 1 s) while short ones complete: at
    # almost any instant some results are ready above an offset still in the model.
    ooo = {"STREAMER_DUPLICATE_MAX_LINGER_MS": "1000", "STREAMER_DUPLICATE_MAX_BATCH": "32"}
    first = service_factory(topics, name="first", extra_env=ooo)
    queries, pairs = _queries("r", 5_000), _pairs("rp", 1_500)
    producing = asyncio.gather(
        produce(kafka_bootstrap, topics.queries, queries, rate=1_500),
        produce(kafka_bootstrap, topics.pairs, pairs, rate=450),
    )
    # Mid-stream on both routes: pairs committed (long and short ones out of order), more
    # results released into open transactions.
    await _until(
        lambda: _route_metric(first, "streamer_results_out_total", "duplicate") >= 300, first
    )
    first.signal(signal.SIGKILL)
    first.wait(10)
    await producing
    second = service_factory(topics, name="second", extra_env=ooo)
    q_committed, q_all = await _committed_and_all(kafka_bootstrap, topics.intents, _ids(queries))
    p_committed, p_all = await _committed_and_all(kafka_bootstrap, topics.duplicates, _ids(pairs))
    q, p = _figures(_ids(queries), q_committed), _figures(_ids(pairs), p_committed)
    aborted = sum(c - 1 for c in q_all.values()) + sum(c - 1 for c in p_all.values())
    print(
        f"exactly-once, service SIGKILL + restart: queries {q}, pairs {p}; read_uncommitted "
        f"sees {aborted} records beyond one per id (aborted)"
    )
    assert q["missing"] == 0 and p["missing"] == 0, second.log_tail()
    assert q["duplicates"] == 0 and p["duplicates"] == 0


async def test_rebalance_two_instances_exactly_once(kafka_bootstrap, service_factory):
    """A second instance joins mid-stream (clean handover: revoke, commit, close), then the
    first is SIGKILLed (unclean: the survivor's producers fence it): exactly once."""
    topics = await create_topics(kafka_bootstrap, partitions=4)
    group = f"eos-{uuid.uuid4().hex[:6]}"
    a = service_factory(topics, name="a", routes="intent", group_id=group)
    queries = _queries("g", 9_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=1_000))
    await asyncio.sleep(2.0)
    b = service_factory(topics, name="b", routes="intent", group_id=group)
    await asyncio.sleep(2.0)
    a.signal(signal.SIGKILL)
    a.wait(10)
    await producing
    committed, everything = await _committed_and_all(kafka_bootstrap, topics.intents, _ids(queries))
    figures = _figures(_ids(queries), committed)
    print(
        f"exactly-once, join + SIGKILL in a group of two: {figures}; read_uncommitted "
        f"{sum(c - 1 for c in everything.values())} beyond one per id"
    )
    assert figures["missing"] == 0, b.log_tail()
    assert figures["duplicates"] == 0


async def test_zombie_late_writes_never_visible(kafka_bootstrap, service_factory):
    """SIGSTOP instance A past the session timeout under load: B takes its partitions and its
    producers fence A. SIGCONT A: its late sends and commits fail (ProducerFenced), its open
    transactions were aborted; read_committed sees every id exactly once."""
    topics = await create_topics(kafka_bootstrap, partitions=4)
    group = f"zombie-{uuid.uuid4().hex[:6]}"
    a = service_factory(topics, name="a", routes="intent", group_id=group)
    b = service_factory(topics, name="b", routes="intent", group_id=group)
    queries = _queries("z", 16_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=400))
    await asyncio.sleep(5.0)
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)  # its workers run on; its loop, consumer, producers stop
    try:
        # B takes over once A's session (6 s) expires and its producers fence A's.
        await asyncio.sleep(14.0)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    await producing
    committed, everything = await _committed_and_all(kafka_bootstrap, topics.intents, _ids(queries))
    figures = _figures(_ids(queries), committed)
    zombie_log = a.log_path.read_text(errors="replace")
    fenced = zombie_log.count('"txn_failed"')
    print(
        f"exactly-once, zombie (SIGSTOP 14 s > session 6 s): {figures}; the zombie's failed "
        f"(fenced) transactions: {fenced}; read_uncommitted "
        f"{sum(c - 1 for c in everything.values())} beyond one per id"
    )
    assert a.proc.poll() is None and b.proc is not None and b.proc.poll() is None
    assert figures["missing"] == 0, b.log_tail()
    assert figures["duplicates"] == 0
    assert fenced > 0, "the zombie never tried to write after being fenced:\n" + a.log_tail()


def test_broker_restart_exactly_once(dedicated_kafka, tiny_cpu_artifact: Path, tmp_path: Path):
    """Stop the broker for ~10 s under load (both routes) and start it again: the service stays
    up; no id missing and none answered twice beyond the duplicates the input itself has (the
    load generator re-sends what the broker did not acknowledge)."""
    kafka = dedicated_kafka
    topics = run_in_fresh_loop(lambda: create_topics(kafka.bootstrap_servers, 2), 60)
    svc = ServiceProcess(
        bootstrap=kafka.bootstrap_servers, artifact=tiny_cpu_artifact, topics=topics,
        log_path=tmp_path / "svc.log", group_id="eos-faults",
        extra_env={**EOS, "STREAMER_SESSION_TIMEOUT_MS": "10000"},
    ).start()  # fmt: skip
    started = time.monotonic()
    try:
        load = LoadGenerator(kafka.bootstrap_servers, topics, 500, 30, prefix="b").start()
        time.sleep(10)
        kafka.stop()
        time.sleep(10)
        assert svc.proc is not None and svc.proc.poll() is None, svc.log_tail()
        kafka.start()
        back = wait_for(lambda: svc.http("/readyz")[0] == 200, 180)
        load.join()
        expect = {"q": set(load.generated["q"]), "p": set(load.generated["p"])}
        b = kafka.bootstrap_servers

        async def read() -> list[Counter[str]]:
            return await asyncio.gather(
                collect(b, topics.intents, expect["q"], 400, settle_s=3,
                        isolation_level="read_committed"),
                collect(b, topics.duplicates, expect["p"], 400, settle_s=3,
                        isolation_level="read_committed"),
                collect(b, topics.queries, expect["q"], 120, settle_s=1),
                collect(b, topics.pairs, expect["p"], 120, settle_s=1),
            )  # fmt: skip

        q_out, p_out, q_in, p_in = run_in_fresh_loop(read, 500)
        assert svc.proc.poll() is None, "the service exited:\n" + svc.log_tail()
    finally:
        svc.stop()
    added = sum(max(0, q_out[i] - q_in[i]) for i in q_out) + sum(
        max(0, p_out[i] - p_in[i]) for i in p_out
    )
    figures = {
        "events": len(expect["q"]) + len(expect["p"]),
        "missing": len(expect["q"] - q_out.keys()) + len(expect["p"] - p_out.keys()),
        "duplicates_added_by_service": added,
        "duplicate_inputs": sum(c - 1 for c in q_in.values()) + sum(c - 1 for c in p_in.values()),
    }
    print(
        f"exactly-once, broker restart: {figures}, ready again after {back} s, "
        f"total {time.monotonic() - started:.0f} s"
    )
    assert back is not None, svc.log_tail()
    assert figures["missing"] == 0, svc.log_tail()
    assert figures["duplicates_added_by_service"] == 0


async def _stable_and_end(bootstrap: str, topic: str) -> tuple[int, int]:
    """(sum of last stable offsets, sum of high watermarks) over a topic's partitions: equal
    when no transaction is open on it."""
    from aiokafka import AIOKafkaConsumer

    sums = []
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, isolation_level=isolation)
        await consumer.start()
        try:
            for _ in range(100):  # no group: every partition is assigned once metadata is in
                if consumer.assignment():
                    break
                await asyncio.sleep(0.1)
            ends = await consumer.end_offsets(list(consumer.assignment()))
            assert ends, f"no partitions of {topic}"
            sums.append(sum(ends.values()))
        finally:
            await consumer.stop()
    return sums[0], sums[1]


async def test_sigterm_drain_commits_and_leaves_no_open_transaction(
    kafka_bootstrap, service_factory
):
    """SIGTERM under load: exit 0 with every transaction committed or aborted (the last
    stable offset of every result partition is its end: read_committed readers are not held
    back until a transaction timeout); the next instance finishes: exactly once."""
    topics = await create_topics(kafka_bootstrap, partitions=2)
    first = service_factory(topics, name="first")
    queries, pairs = _queries("t", 3_000), _pairs("tp", 600)
    producing = asyncio.gather(
        produce(kafka_bootstrap, topics.queries, queries, rate=1_000),
        produce(kafka_bootstrap, topics.pairs, pairs, rate=200),
    )
    await _until(lambda: first.metric("streamer_transactions_total") >= 5, first)
    first.signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 60) == 0, first.log_tail()
    stable = {
        t: await _stable_and_end(kafka_bootstrap, t)
        for t in (topics.intents, topics.duplicates, topics.dlq)
    }
    await producing
    second = service_factory(topics, name="second")
    q_seen, _ = await _committed_and_all(kafka_bootstrap, topics.intents, _ids(queries))
    p_seen, _ = await _committed_and_all(kafka_bootstrap, topics.duplicates, _ids(pairs))
    q, p = _figures(_ids(queries), q_seen), _figures(_ids(pairs), p_seen)
    print(f"exactly-once, SIGTERM drain + next instance: queries {q}, pairs {p}; "
          f"(stable, end) offsets after the drain: {list(stable.values())}")  # fmt: skip
    assert all(lso == end for lso, end in stable.values()), stable
    assert q["missing"] == 0 and p["missing"] == 0, second.log_tail()
    assert q["duplicates"] == 0 and p["duplicates"] == 0
