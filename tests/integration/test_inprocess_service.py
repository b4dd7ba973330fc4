"""The cpu default: the model runs in the service process (STREAMER_EXECUTOR=auto -> inprocess).

The rest of the integration suite pins the worker-process path (`pipeline_harness`), which every
accelerator runs and the worker-kill tests need. Here the shipped cpu default is held to the same
guarantees that do not involve a worker process: zero loss on both routes, a SIGTERM drain that
exits 0 with nothing left behind, and a SIGKILL of the whole service that loses nothing.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    collect,
    create_topics,
    pair_event,
    produce,
    query_event,
    shm_leftovers,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DEFAULT = {"STREAMER_EXECUTOR": "auto"}  # what a clone runs on cpu


def _queries(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}{i}".encode(), query_event(f"{prefix}{i}", QUERIES[i % len(QUERIES)] + f" {i}"))
        for i in range(n)
    ]


@pytest.fixture
def service_factory(kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path):
    """Start services with the shipped executor default; every one is stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(topics, *, name: str = "svc", **kwargs) -> ServiceProcess:
        svc = ServiceProcess(
            bootstrap=kafka_bootstrap,
            artifact=tiny_cpu_artifact,
            topics=topics,
            log_path=tmp_path / f"{name}.log",
            extra_env=DEFAULT,
            **kwargs,
        )
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


async def test_in_process_default_loses_nothing_on_both_routes(kafka_bootstrap, service_factory):
    topics = await create_topics(kafka_bootstrap, partitions=4)
    svc = service_factory(topics)
    assert svc.worker_pids() == [], "the cpu default runs no worker process"
    queries = _queries("q", 5_000)
    pairs = [(f"p{i}".encode(), pair_event(f"p{i}", i)) for i in range(1_000)]
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
    svc = service_factory(topics, name="first", routes="intent")
    queries = _queries("s", 4_000)
    producing = asyncio.create_task(produce(kafka_bootstrap, topics.queries, queries, rate=1_500))
    await asyncio.sleep(1.0)
    svc.signal(signal.SIGTERM)
    assert svc.wait(30) == 0, svc.log_tail()
    assert set(shm_leftovers()) - before == set()
    second = service_factory(topics, name="second", routes="intent")
    await asyncio.sleep(0.5)
    second.signal(signal.SIGKILL)
    second.wait(10)
    await producing
    service_factory(topics, name="third", routes="intent")
    seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in queries}, 180)
    assert {k.decode() for k, _ in queries} <= seen.keys()
