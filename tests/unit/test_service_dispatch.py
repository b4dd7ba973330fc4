"""Work-conserving dispatch: an idle worker takes the open batch at once; a busy one lets it grow.

No Kafka here: the intake's ingest and the batch runner's dispatch run against a gated fake
executor, a fake encoder and a producer that acknowledges at once, so the test controls when a
batch's model call returns. The parts are wired by the composition root (`app.assemble`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

from streamer.app import assemble, target_rates
from streamer.config import load_settings
from streamer.model.artifact import ModelMeta
from streamer.pipeline.batcher import intent_policy
from streamer.pipeline.routes import make_routes
from streamer.pipeline.service import Service


class _GatedExecutor:
    """One worker; each submit waits until the test opens the gate."""

    capacity = 2
    parallelism = 1
    restarts = 0

    def __init__(self) -> None:
        self.calls: list[int] = []  # real rows per submitted batch (fillers have 2 tokens)
        self.gate = asyncio.Event()
        self.runner_info: dict[str, str] = {}

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def live_workers(self) -> int:
        return 1

    async def submit(
        self, task: Any, ids: np.ndarray, mask: np.ndarray, types: Any, times: Any = None
    ) -> Any:
        self.calls.append(int((mask.sum(axis=1) > 2).sum()))
        await self.gate.wait()
        scores = np.zeros((ids.shape[0], 2), dtype=np.float32)
        scores[:, 0] = 1.0
        return scores


class _Encoder:
    def encode_queries(self, texts: list[str]) -> Any:
        n = len(texts)
        return SimpleNamespace(
            input_ids=np.full((n, 4), 7, dtype=np.int32),
            token_type_ids=np.zeros((n, 4), dtype=np.int32),
            lengths=np.full(n, 4),
            truncated=np.zeros(n, dtype=bool),
        )

    def encode_products(self, lefts: list[Any], rights: list[Any]) -> Any:
        raise NotImplementedError


class _AckingProducer:
    def __init__(self) -> None:
        self.sent = 0

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> Any:
        self.sent += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class _Consumer:
    """Only what the intake and publisher touch without a broker."""

    async def commit(self, offsets: Any) -> None: ...


@dataclass
class _Msg:
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_type: int = 0  # 1: LogAppendTime


def _query(i: int) -> _Msg:
    body = {"event_id": f"q{i}", "ts_ms": 1_700_000_000_000, "query": f"query {i}"}
    return _Msg(offset=i, value=orjson.dumps(body))


def _service(
    max_linger_s: float = 10.0, dispatch_when_idle: bool = True
) -> tuple[Service, _GatedExecutor, _AckingProducer]:
    """By default a linger far longer than the test: only size and idleness close a batch."""
    settings = load_settings(routes="intent", dispatch_when_idle=dispatch_when_idle)
    settings = settings.model_copy(update=target_rates("cpu", settings))
    model = ModelMeta(name="m", version="1", labels=("a", "b"), duplicate_threshold=0.5)
    handlers = make_routes(settings, model, _Encoder())
    executor = _GatedExecutor()
    policy = intent_policy(max_batch=8, max_padded_tokens=8 * 16, max_linger_s=max_linger_s)
    producer = _AckingProducer()
    service = assemble(
        settings, handlers, executor, {"intent": policy},  # type: ignore[arg-type]
        producer=producer, consumer=_Consumer(),
    )  # fmt: skip
    return service, executor, producer


def _batches(service: Service, reason: str) -> float:
    return float(service.metrics.batches.labels("intent", reason)._value.get())


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_idle_worker_takes_a_lone_row_at_once_and_a_busy_one_lets_the_batch_grow() -> None:
    service, executor, producer = _service()
    rt = service.routes["intent"]
    tp = ("queries", 0)

    service.intake.ingest(rt, tp, [_query(0)], now=0.0)
    service.runner.dispatch_if_idle()
    await _settle()
    assert executor.calls == [1], "an idle worker must not wait for the linger"

    service.intake.ingest(rt, tp, [_query(i) for i in range(1, 4)], now=0.0)
    service.runner.dispatch_if_idle()
    await _settle()
    assert executor.calls == [1], "while the worker is busy the rows wait and batch up"
    assert len(rt.batcher) == 3

    executor.gate.set()  # the first batch returns: the worker is free, the 3 rows go as one
    await _settle()
    assert executor.calls == [1, 3]
    assert _batches(service, "idle") == 2 and _batches(service, "linger") == 0
    for _ in range(20):
        if producer.sent == 4:
            break
        await asyncio.sleep(0)
    assert producer.sent == 4
    assert service.runner.running_batches == 0


async def test_full_batches_close_by_size_whatever_the_worker_does() -> None:
    service, executor, _ = _service()
    rt = service.routes["intent"]
    service.intake.ingest(rt, ("queries", 0), [_query(i) for i in range(8)], now=0.0)
    await _settle()
    assert executor.calls == [8]
    assert _batches(service, "size") == 1
    service.runner.dispatch_if_idle()  # nothing left open: nothing more to send
    await _settle()
    assert executor.calls == [8]
    executor.gate.set()


async def test_switched_off_the_lone_row_waits_for_its_linger() -> None:
    service, executor, _ = _service(dispatch_when_idle=load_settings().dispatch_when_idle)
    assert not load_settings().dispatch_when_idle, "off by default"
    rt = service.routes["intent"]
    service.intake.ingest(rt, ("queries", 0), [_query(0)], now=0.0)
    service.runner.dispatch_if_idle()
    await _settle()
    assert executor.calls == [] and len(rt.batcher) == 1


async def test_a_batch_with_no_linger_left_goes_without_waiting_for_the_ticker() -> None:
    """The fetch loop closes batches whose deadline already passed before it yields."""
    service, executor, _ = _service(max_linger_s=0.0, dispatch_when_idle=False)
    rt = service.routes["intent"]
    service.intake.ingest(rt, ("queries", 0), [_query(0), _query(1)], now=5.0)
    service.runner.dispatch_due(4.999)  # not due yet
    await _settle()
    assert executor.calls == [] and len(rt.batcher) == 2
    service.runner.dispatch_due(5.0)
    await _settle()
    assert executor.calls == [2] and _batches(service, "linger") == 1
    executor.gate.set()


async def test_rows_carry_their_hand_off_times_for_the_tail_attribution() -> None:
    """A LogAppendTime source splits the way in at the broker's append; the batcher's clock
    starts after the tokenizer, after the fetch it came from."""
    service, executor, _ = _service()
    rt = service.routes["intent"]
    ts = 1_700_000_000_000
    appended = _Msg(
        offset=0,
        value=orjson.dumps({"event_id": "q0", "ts_ms": ts, "query": "q"}),
        timestamp=ts + 40,
        timestamp_type=1,
    )
    created = _Msg(offset=1, value=orjson.dumps({"event_id": "q1", "ts_ms": ts, "query": "q"}))
    fetched_at = time.monotonic()
    service.intake.ingest(
        rt, ("queries", 0), [appended, created], fetched_at=fetched_at, fetched_wall=ts / 1e3 + 0.1
    )
    first, second = rt.batcher.flush(time.monotonic()).items  # type: ignore[union-attr]
    assert first.broker_s == pytest.approx(0.040) and first.fetch_s == pytest.approx(0.060)
    assert second.broker_s == 0 and second.fetch_s == pytest.approx(0.100)
    assert first.ready_at >= fetched_at and first.decode_s == first.ready_at - fetched_at
    executor.gate.set()
