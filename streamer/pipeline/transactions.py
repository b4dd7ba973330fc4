"""One input partition's Kafka transaction: its producer, its held outcomes, its commit.

Exactly-once delivery (`STREAMER_DELIVERY=exactly-once`, see `exactly_once.py` for the whole)
gives every input partition its own transactional producer, with a transactional id derived
from the group, topic and partition. aiokafka implements TxnOffsetCommit v0 only: the broker
cannot tell from the offset commit whether the committer is still a member of the group
(KIP-447's generation fencing needs v3). The transactional id does the fencing instead: the
next owner's `start()` (InitProducerId on the same id) bumps the producer epoch, which aborts
the previous owner's open transaction, waits out one that is already committing, and makes
every later send, offset commit or commit of the previous owner fail with ProducerFenced.

A transaction holds exactly the results of the offsets it commits. Outcomes (the result or
dead-letter records of one input offset) are accepted in any order and released into the open
transaction in offset order by `OrderedRelease`; `commit()` sends the offset one past the last
released outcome with the transaction, so the results and the input offset are visible
together or not at all.

Every accepted outcome is settled exactly once (`Outcome.done`: the record's in-flight and
watermark bookkeeping) whatever happens: after its send is acknowledged, when the partition
fails, or when held outcomes are dropped at a rewind or a revocation. Dropped work is redone by
whoever resumes the partition from its committed offset.

aiokafka specifics handled here: a send whose future fails does not abort the transaction by
itself (`commit_transaction` would commit without that record), so `commit()` first checks
every send of the transaction; after ProducerFenced the producer's sender task is dead and the
producer is unusable (no abort: the next InitProducerId on the id aborts the transaction), so a
failure ends this object and the owner builds a new one (issue aio-libs/aiokafka#1098 is a
sender-task crash of that kind). Offsets are sent once per transaction, awaited, right before
the commit, never concurrently with sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from streamer.pipeline.ordered import OrderedRelease
from streamer.pipeline.state import RouteState

log = logging.getLogger("streamer.transactions")

Record = tuple[str, bytes | None, bytes, Any]  # topic, key, value, headers


class TransactionalProducerLike(Protocol):
    """What one partition's transaction needs of aiokafka's AIOKafkaProducer(transactional_id)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def begin_transaction(self) -> None: ...
    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> Any: ...
    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group_id: str) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...


def transactional_id(group_id: str, tp: Any) -> str:
    """Stable per input partition (as faust-streaming does): the next owner fences the last."""
    return f"{group_id}-{tp.topic}-{tp.partition}"


@dataclass
class Outcome:
    """What one input offset produced: its records (a result or a dead letter) and how to settle
    its bookkeeping once it is sent, or dropped."""

    state: RouteState
    records: list[Record]
    done: Callable[[], None]
    source_ts_ms: int | None = None  # results: for the end-to-end latency at commit


class PartitionTxn:
    """The open transaction of one input partition and the outcomes waiting to enter it."""

    def __init__(
        self,
        tp: Any,
        generation: int,
        producer: TransactionalProducerLike,
        *,
        group_id: str,
        on_released: Callable[[list[Outcome], float], None],
        on_failed: Callable[[PartitionTxn, BaseException], None],
        timeout_s: float,
    ) -> None:
        self.tp = tp
        self.generation = generation
        self._producer = producer
        self._group_id = group_id
        self._on_released = on_released
        self._on_failed = on_failed
        self._timeout_s = timeout_s
        self._order: OrderedRelease[Outcome] = OrderedRelease()
        self._lock = asyncio.Lock()  # sends and the commit never interleave
        self._open = False
        self._acks: list[Any] = []  # send futures of the open transaction
        self._visible: list[Outcome] = []  # released into the open transaction
        self.failed: BaseException | None = None
        self.committed: int | None = None  # last offset committed by this producer

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """InitProducerId: fences any earlier producer of this partition (bounded)."""
        await asyncio.wait_for(self._producer.start(), timeout=self._timeout_s)

    async def close(self, *, abort: bool) -> None:
        """Drop held outcomes (settled), abort an open transaction if asked and possible, stop."""
        for outcome in self._order.reset():
            outcome.done()
        healthy = self.failed is None
        if healthy:
            self.failed = RuntimeError("closed")
        if healthy and abort and self._open:
            # Not in the middle of a release or a commit (the lock), and bounded.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._lock.acquire(), self._timeout_s)
                try:
                    if self._open:
                        await asyncio.wait_for(
                            asyncio.shield(self._producer.abort_transaction()), self._timeout_s
                        )
                        self._open = False
                finally:
                    self._lock.release()
        stop = asyncio.ensure_future(self._producer.stop())
        stop.add_done_callback(_retrieve)  # a fenced producer's stop() raises ProducerFenced
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(stop), self._timeout_s)
        _retrieve_internal(self._producer)

    @property
    def has_open_transaction(self) -> bool:
        """Whether anything was released since the last commit."""
        return self._open

    # ------------------------------------------------------------------ outcomes
    def track(self, offset: int) -> None:
        """A fetched offset of this partition: nothing above it is released before it."""
        if self.failed is None:
            self._order.track(offset)

    def accept(self, offset: int, outcome: Outcome) -> bool:
        """Take an outcome (held until its turn); False: not taken, the caller settles it."""
        return self.failed is None and self._order.complete(offset, outcome)

    async def flush(self) -> None:
        """Release what is contiguous into the open transaction and wait for the broker's acks.

        Outcomes are settled after their ack (or at once on failure), by the task that
        released them: a held outcome is settled by the task whose outcome unblocked it.
        """
        released: list[Outcome] = []
        acks: list[Any] = []
        t0 = time.monotonic()
        async with self._lock:
            if self.failed is not None:
                return
            try:
                ready = self._order.release()
                released = [outcome for _, outcome in ready]
                if ready:
                    if not self._open:
                        await asyncio.wait_for(
                            self._producer.begin_transaction(), timeout=self._timeout_s
                        )
                        self._open = True
                    for _, outcome in ready:
                        for topic, key, value, headers in outcome.records:
                            acks.append(
                                await self._producer.send(topic, value, key=key, headers=headers)
                            )
                    self._acks.extend(acks)
                    self._visible.extend(released)
            except BaseException as exc:
                # A released outcome that did not reach the producer must never be committed
                # past: the partition fails (cancellation included) and is redone.
                self.fail(exc)
                for outcome in released:
                    outcome.done()
                if not isinstance(exc, Exception):
                    raise
                return
        try:
            if acks:
                results = await asyncio.gather(*acks, return_exceptions=True)
                error = next((r for r in results if isinstance(r, BaseException)), None)
                if error is not None:
                    self.fail(error)
                elif self.failed is None:
                    self._on_released(released, time.monotonic() - t0)
        finally:
            for outcome in released:
                outcome.done()

    # ------------------------------------------------------------------ commit
    async def commit(self) -> list[Outcome] | None:
        """Commit the open transaction with its input offset; returns the outcomes it made
        visible (None: nothing to commit, or the partition failed and will be redone)."""
        async with self._lock:
            if self.failed is not None or not self._open:
                return None
            point = self._order.point
            try:
                if point is None:  # an open transaction has released outcomes: never here
                    raise RuntimeError("open transaction without a released offset")
                await asyncio.wait_for(self._commit(point), timeout=self._timeout_s)
            except BaseException as exc:
                self.fail(exc)
                if not isinstance(exc, Exception):
                    raise
                return None
            visible, self._visible, self._acks = self._visible, [], []
            self._open = False
            self.committed = point
            return visible

    async def _commit(self, point: int) -> None:
        # A failed send does not fail aiokafka's transaction: check every one before committing.
        acks = [asyncio.shield(ack) for ack in self._acks]
        for result in await asyncio.gather(*acks, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
        await self._producer.send_offsets_to_transaction({self.tp: point}, self._group_id)
        await self._producer.commit_transaction()

    def fail(self, exc: BaseException) -> None:
        """End this transaction: held outcomes are settled, the owner rewinds the partition."""
        if self.failed is not None:
            return
        self.failed = exc
        for outcome in self._order.reset():
            outcome.done()
        self._on_failed(self, exc)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as seen (no "never retrieved" error at GC)."""
    if not future.cancelled():
        future.exception()


def _retrieve_internal(producer: Any) -> None:
    """After a fence, aiokafka fails its transaction waiter, which nobody awaits unless a
    commit or abort was under way; asyncio would log it as an ERROR at garbage collection."""
    waiter = getattr(getattr(producer, "_txn_manager", None), "_transaction_waiter", None)
    if isinstance(waiter, asyncio.Future) and waiter.done():
        _retrieve(waiter)
