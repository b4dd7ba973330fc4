"""The publisher's send loop: nothing counts as acknowledged until the broker has it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from streamer.pipeline.metrics import Metrics
from streamer.pipeline.publisher import Publisher
from streamer.pipeline.state import Progress, StopFlags


async def _no_commit(offsets: Any) -> None: ...


def _publisher(
    producer: Any, flags: StopFlags | None = None, metrics: Metrics | None = None
) -> Publisher:
    return Publisher(
        producer, Progress(), metrics or Metrics(), flags or StopFlags(), dlq_topic="dlq",
        commit=_no_commit,
    )  # fmt: skip


class _FlakyProducer:
    """send() raises once, then one future fails, then everything succeeds."""

    def __init__(self) -> None:
        self.delivered: list[bytes] = []
        self.raise_next_send = True
        self.fail_next_future = True

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> Any:
        if self.raise_next_send:
            self.raise_next_send = False
            raise KafkaTimeoutError("metadata unavailable")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_next_future:
            self.fail_next_future = False
            fut.set_exception(NotLeaderForPartitionError())
        else:
            self.delivered.append(value)
            fut.set_result(None)
        return fut


async def test_send_until_acked_retries_raised_sends_and_failed_futures() -> None:
    """Both failure kinds are resent; every record is delivered exactly once in the end."""
    producer = _FlakyProducer()
    metrics = Metrics()
    publisher = _publisher(producer, metrics=metrics)
    records = [(f"k{i}".encode(), f"v{i}".encode(), None) for i in range(5)]
    assert await publisher.send_until_acked("t", records, "intent")
    assert sorted(producer.delivered) == sorted(v for _, v, _ in records)
    errors = metrics.produce_errors._value.get()
    assert errors == 2


async def test_forced_exit_abandons_the_retry() -> None:
    """After a second signal the loop gives up (rows stay uncommitted) instead of spinning."""
    flags = StopFlags()
    flags.on_signal()
    flags.on_signal()
    publisher = _publisher(_FlakyProducer(), flags)
    assert not await publisher.send_until_acked("t", [(b"k", b"v", None)], "intent")
