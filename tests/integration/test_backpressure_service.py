"""Backpressure with an artificially slowed worker: in-flight and memory stay bounded, none lost.

The Service runs in the test's event loop (so its state can be sampled) with the real
multi-process executor whose fake runner sleeps per batch.
"""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import pytest

from tests.integration.pipeline_harness import (
    QUERIES,
    collect,
    create_topics,
    fake_runner_service,
    produce,
    query_event,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 600
SLEEP_PER_BATCH_S = 0.04


def _rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / (1 << 20)


async def test_slow_worker_keeps_inflight_and_memory_bounded(
    kafka_bootstrap: str, tiny_cpu_artifact: Path
) -> None:
    """A worker 10x slower than the offered load: partitions pause, nothing grows, none lost."""
    topics = await create_topics(kafka_bootstrap, partitions=2)
    service = fake_runner_service(
        kafka_bootstrap, tiny_cpu_artifact, topics, sleep_s=SLEEP_PER_BATCH_S, group_id="bp-test"
    )
    await service.start()
    running = asyncio.create_task(service.run())
    intent = service.routes["intent"]
    high = intent.backpressure.high
    samples: list[int] = []
    paused_seen = False
    rss_start = _rss_mib()
    rss_max = rss_start

    async def sample() -> None:
        nonlocal paused_seen, rss_max
        while True:
            samples.append(intent.backpressure.inflight)
            paused_seen |= bool(intent.paused)
            rss_max = max(rss_max, _rss_mib())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        records = [
            (f"bp{i}".encode(), query_event(f"bp{i}", QUERIES[i % len(QUERIES)]))
            for i in range(N_EVENTS)
        ]
        await produce(kafka_bootstrap, topics.queries, records)  # all at once: a burst
        seen = await collect(kafka_bootstrap, topics.intents, {k.decode() for k, _ in records}, 120)
    finally:
        sampler.cancel()
        service.request_stop()
        exit_code = await running
    print(
        f"high watermark {high}, max in-flight seen {max(samples)}, paused seen {paused_seen}, "
        f"RSS {rss_start:.0f} -> max {rss_max:.0f} MiB"
    )
    assert not {k.decode() for k, _ in records} - seen.keys()
    assert max(samples) <= high
    assert paused_seen
    # The backlog stayed in Kafka: memory did not grow with the 600-event burst.
    assert rss_max - rss_start < 100
    assert exit_code == 0
