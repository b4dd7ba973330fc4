"""A second signal forces exit: in-flight work is abandoned (uncommitted), workers are closed."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.integration.pipeline_harness import (
    QUERIES,
    create_topics,
    fake_runner_service,
    produce,
    query_event,
    shm_leftovers,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_second_signal_forces_exit(kafka_bootstrap: str, tiny_cpu_artifact: Path) -> None:
    """A worker stuck on 30 s batches: first signal drains (deadline 60 s), second exits now."""
    before = set(shm_leftovers())
    topics = await create_topics(kafka_bootstrap, partitions=1)
    service = fake_runner_service(
        kafka_bootstrap, tiny_cpu_artifact, topics, sleep_s=30.0, group_id="sig-test",
        drain_timeout_s=60,
    )  # fmt: skip
    await service.start()
    running = asyncio.create_task(service.run())
    await produce(
        kafka_bootstrap,
        topics.queries,
        [(f"s{i}".encode(), query_event(f"s{i}", QUERIES[i % len(QUERIES)])) for i in range(8)],
    )
    deadline = time.monotonic() + 30
    while service.routes["intent"].backpressure.inflight == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert service.routes["intent"].backpressure.inflight > 0
    service.handle_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert not running.done()  # draining: waiting for the 30 s batch
    t0 = time.monotonic()
    service.handle_signal(signal.SIGTERM)
    code = await asyncio.wait_for(running, timeout=20)
    print(f"forced exit after the second signal in {time.monotonic() - t0:.2f} s, code {code}")
    assert code == 1
    assert set(shm_leftovers()) - before == set()
