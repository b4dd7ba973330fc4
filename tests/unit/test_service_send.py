"""The service's send loop: nothing counts as acknowledged until the broker has it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from streamer.config import load_settings
from streamer.pipeline.service import Service


class _Executor:
    capacity = 1
    parallelism = 1
    restarts = 0


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
    service = Service(load_settings(paths="intent"), [], _Executor(), {})
    producer = _FlakyProducer()
    service._producer = producer  # type: ignore[assignment]
    records = [(f"k{i}".encode(), f"v{i}".encode(), None) for i in range(5)]
    assert await service._send_until_acked("t", records, "intent")
    assert sorted(producer.delivered) == sorted(v for _, v, _ in records)
    errors = service.metrics.produce_errors._value.get()
    assert errors == 2


async def test_forced_exit_abandons_the_retry() -> None:
    """After a second signal the loop gives up (rows stay uncommitted) instead of spinning."""
    service = Service(load_settings(paths="intent"), [], _Executor(), {})
    service._producer = _FlakyProducer()  # type: ignore[assignment]
    service._signals = 2
    assert not await service._send_until_acked("t", [(b"k", b"v", None)], "intent")
