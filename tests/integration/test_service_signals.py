"""A second signal forces exit: in-flight work is abandoned (uncommitted), workers are closed."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from streamer.app import batch_policies, target_rates
from streamer.config import load_settings
from streamer.model.artifact import read_manifest
from streamer.model.runner import RunnerManifest
from streamer.model.tokenize import Encoder
from streamer.pipeline.executor import MultiprocExecutor, RunnerSpec
from streamer.pipeline.paths import ModelInfo, make_handlers
from streamer.pipeline.service import Service
from tests.integration.pipeline_harness import (
    QUERIES,
    create_topics,
    produce,
    query_event,
    shm_leftovers,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_second_signal_forces_exit(kafka_bootstrap: str, tiny_cpu_artifact: Path) -> None:
    """A worker stuck on 30 s batches: first signal drains (deadline 60 s), second exits now."""
    before = set(shm_leftovers())
    topics = await create_topics(kafka_bootstrap, partitions=1)
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap, paths="intent", group_id="sig-test", metrics_port=0,
        topic_queries=topics.queries, topic_pairs=topics.pairs, topic_intents=topics.intents,
        topic_duplicates=topics.duplicates, topic_dlq=topics.dlq, drain_timeout_s=60,
    )  # fmt: skip
    settings = settings.model_copy(update=target_rates("cpu", settings))
    manifest = RunnerManifest.from_manifest(read_manifest(tiny_cpu_artifact), "fp32")
    executor = MultiprocExecutor(
        RunnerSpec(
            "tests.fakes:make_fake_runner",
            {"n_outputs": len(manifest.labels), "sleep_s": 30.0, "zero": True},
        ),
        workers=1,
        threads_per_worker=1,
        max_batch=max(b.max_batch for b in manifest.buckets.values()),
        max_seq_len=max(b.max_seq_len for b in manifest.buckets.values()),
        max_outputs=len(manifest.labels),
        heartbeat_timeout_s=120,
    )
    model = ModelInfo(
        manifest.name, manifest.version, manifest.labels, manifest.duplicate_threshold
    )
    service = Service(
        settings,
        make_handlers(settings, model, Encoder.from_artifact(tiny_cpu_artifact)),
        executor,
        batch_policies("cpu", settings, manifest.buckets),
    )
    await service.start()
    running = asyncio.create_task(service.run())
    await produce(
        kafka_bootstrap,
        topics.queries,
        [(f"s{i}".encode(), query_event(f"s{i}", QUERIES[i % len(QUERIES)])) for i in range(8)],
    )
    deadline = time.monotonic() + 30
    while service.paths["intent"].backpressure.inflight == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert service.paths["intent"].backpressure.inflight > 0
    service._on_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert not running.done()  # draining: waiting for the 30 s batch
    t0 = time.monotonic()
    service._on_signal(signal.SIGTERM)
    code = await asyncio.wait_for(running, timeout=20)
    print(f"forced exit after the second signal in {time.monotonic() - t0:.2f} s, code {code}")
    assert code == 1
    assert set(shm_leftovers()) - before == set()
