"""Exactly-once delivery: results, dead letters and input offsets in one Kafka transaction per
input partition (`STREAMER_DELIVERY=exactly-once`; at-least-once stays the default).

Design, and why:

- **One transactional producer per input partition**, id `{group}-{topic}-{partition}`
  (`transactions.transactional_id`), created when the partition is assigned and closed when it
  is revoked. aiokafka sends TxnOffsetCommit v0, which carries no group generation, so the
  broker cannot fence a stale group member by its offset commit (KIP-447). Fencing comes from
  the transactional id instead: the new owner's InitProducerId aborts the old owner's open
  transaction (or waits until one that is committing has finished) and bumps the epoch, after
  which every write of the old owner fails with ProducerFenced. One producer for all
  partitions could not do that: its id would not follow a partition to its next owner.
- **Re-read the committed offset after the producer is up.** aiokafka fetches committed
  offsets as soon as partitions are assigned (OffsetFetch v3, without KIP-447's
  require_stable), possibly before the previous owner's last commit has been written. So a
  newly assigned partition is held (paused) until its producer's InitProducerId has
  completed, then the consumer seeks to the committed offset read now, and only then fetches.
- **A transaction holds exactly the results of the offsets it commits**: outcomes are released
  into the partition's transaction in offset order (`ordered.OrderedRelease`) and the commit
  sends the offset just past the last released one. Nothing beyond the committed offset is
  ever visible, so resuming from it after a crash cannot answer anything twice.
- **Commit on an interval** (`transaction_interval_ms`): each partition with released results
  commits its transaction; read_committed consumers see results only then, so the interval
  is added latency (on average half of it, plus the commit's round trips).
- **Any failure rewinds the partition**: a failed send, commit or fence ends its producer; held
  work is dropped, the assignment generation is bumped (late completions are ignored), a new
  producer fences the old one, and the consumer seeks back to the committed offset. Only
  what a committed transaction holds was ever visible, so redoing the rest is exact.
- **Drain and shutdown** commit what is released and abort what could not be committed, so
  read_committed consumers are not held behind an open transaction until its timeout.

Limits: a zombie (an instance that lost its partitions without noticing, e.g. paused past the
session timeout) keeps writing until its next transactional request, which fails once the new
owner has initialised the partition's id; its open transaction is aborted then. Until the new
owner has done so, the zombie can still commit (TxnOffsetCommit v0 is not checked against the
group); that commit is consistent (results and offsets of the same range), and the new owner
reads the offset after it. A zombie that rewinds may re-initialise the id and fence the new
owner in turn: the commits stay exact, the two only redo each other's open transactions
until the zombie's consumer learns of its revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol

from aiokafka.errors import TransactionalIdAuthorizationFailed

from streamer.pipeline.attribution import BatchClock
from streamer.pipeline.metrics import Metrics
from streamer.pipeline.publisher import Header, HeaderFn, Publisher
from streamer.pipeline.routes import Row
from streamer.pipeline.state import Progress, RouteState, StopFlags
from streamer.pipeline.transactions import (
    Outcome,
    PartitionTxn,
    TransactionalProducerLike,
    transactional_id,
)
from streamer.records.types import DeadLetter

log = logging.getLogger("streamer.exactly_once")

ProducerFactory = Callable[[str], TransactionalProducerLike]  # transactional id -> producer


class PartitionControl(Protocol):
    """What exactly-once needs of the consumer side of a partition (`KafkaIntake` has it)."""

    def hold(self, tps: Iterable[Any]) -> None:
        """Stop fetching these partitions until `release` (not ready to be processed)."""

    def release(self, tps: Iterable[Any]) -> None:
        """Ready again: fetch, unless backpressure holds the route."""

    async def reposition(self, tps: Iterable[Any]) -> None:
        """Seek to the committed offset read now (or the start when there is none)."""

    def owns(self, tp: Any) -> bool:
        """Whether the consumer still has tp assigned."""


class _NoSharedProducer:
    """Exactly-once sends through each partition's own producer, never a shared one."""

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> Any:
        raise RuntimeError("exactly-once sends only inside a partition's transaction")


async def _no_commit(offsets: dict[Any, int]) -> None:
    raise RuntimeError("exactly-once commits offsets only inside a partition's transaction")


class TransactionalPublisher(Publisher):
    """The publisher of exactly-once delivery: a `PartitionTxn` per assigned input partition."""

    transactional = True

    def __init__(
        self,
        producers: ProducerFactory,
        progress: Progress,
        metrics: Metrics,
        flags: StopFlags,
        *,
        dlq_topic: str,
        group_id: str,
        timeout_s: float,
        extra_headers: HeaderFn | None = None,
        forward_headers: Iterable[str] = (),
        retry_backoff_s: float = 1.0,
        assign_wait_s: float = 10.0,
    ) -> None:
        super().__init__(
            _NoSharedProducer(), progress, metrics, flags, dlq_topic=dlq_topic,
            commit=_no_commit, extra_headers=extra_headers, forward_headers=forward_headers,
        )  # fmt: skip
        self._producers = producers
        self._group_id = group_id
        self._timeout_s = timeout_s
        self._retry_backoff_s = retry_backoff_s
        self._assign_wait_s = assign_wait_s
        self._control: PartitionControl | None = None
        self._txns: dict[Hashable, PartitionTxn] = {}
        self._lifecycle: dict[Hashable, asyncio.Task[None]] = {}  # opening or rewinding, per tp
        self._committing: dict[asyncio.Task[None], PartitionTxn] = {}  # commit_loop's, running
        progress.on_track = self._track

    def bind(self, control: PartitionControl) -> None:
        """The intake that holds, repositions and releases partitions (built after us)."""
        self._control = control

    @property
    def control(self) -> PartitionControl:
        """The bound intake."""
        assert self._control is not None, "bind() the intake before consuming"
        return self._control

    # ------------------------------------------------------------------ outcomes
    async def publish(
        self,
        state: RouteState,
        rows: Sequence[Row],
        values: list[bytes],
        clock: BatchClock | None = None,
    ) -> None:
        """Hand one batch's results to their partitions' transactions (released in order).

        `clock` is not attributed here: a result becomes visible at its transaction's commit,
        on the commit interval, which is the whole story of this mode's tail."""
        topic = state.handler.result_topic
        touched: dict[int, PartitionTxn] = {}
        for row, (key, value, headers) in zip(
            rows, self.result_records(state, rows, values), strict=True
        ):
            outcome = Outcome(
                state,
                [(topic, key, value, headers)],
                partial(self._progress.done, state, row.tp, row.offset, row.generation),
                row.source_ts_ms,
            )
            txn = self._accept(row.tp, row.generation, row.offset, outcome)
            if txn is not None:
                touched[id(txn)] = txn
        await asyncio.gather(*(txn.flush() for txn in touched.values()))

    async def _publish_dead_letter(
        self,
        state: RouteState,
        tp: Hashable,
        offset: int,
        generation: int,
        key: bytes | None,
        letter: DeadLetter,
        headers: Sequence[Header] | None,
    ) -> None:
        value = self.dead_letter_value(letter)
        outcome = Outcome(
            state,
            [(self._dlq_topic, key, value, headers)],
            partial(self._progress.done, state, tp, offset, generation),
        )
        txn = self._accept(tp, generation, offset, outcome)
        if txn is not None:
            await txn.flush()

    def _accept(
        self, tp: Hashable, generation: int, offset: int, outcome: Outcome
    ) -> PartitionTxn | None:
        txn = self._txns.get(tp)
        if txn is None or txn.generation != generation or not txn.accept(offset, outcome):
            # Revoked, rewound or answered twice: settled, and redone by whoever resumes it.
            outcome.done()
            return None
        return txn

    def _track(self, tp: Hashable, offset: int, generation: int) -> None:
        txn = self._txns.get(tp)
        if txn is None:
            return
        if generation == txn.generation:
            txn.track(offset)
        elif generation > txn.generation:
            # The consumer went back on its own (offset reset): the transaction's order is void.
            txn.fail(RuntimeError(f"{tp}: offsets went back (generation {generation})"))

    def _released(self, outcomes: list[Outcome], produce_s: float) -> None:
        for state in {id(o.state): o.state for o in outcomes}.values():
            state.linger.observe("produce", produce_s)
            self._metrics.stage_latency.labels(state.name, "produce").observe(produce_s)

    # ------------------------------------------------------------------ commit
    async def commit(self, only: set[Any] | None = None) -> None:
        """Commit every open transaction (or those of `only`): results and offsets together."""
        txns = [
            txn
            for tp, txn in list(self._txns.items())
            if txn.has_open_transaction and (only is None or tp in only)
        ]
        if txns:
            await asyncio.gather(*(self._commit_one(txn) for txn in txns))

    async def commit_loop(self, interval_s: float) -> None:
        """Every interval, commit each partition's open transaction on its own: a partition
        whose commit is slow (a broker away) holds back neither the others nor the next tick."""
        while not self._flags.stopping.is_set():
            await asyncio.sleep(interval_s)
            busy = {id(txn) for txn in self._committing.values()}
            for txn in list(self._txns.values()):
                if txn.has_open_transaction and id(txn) not in busy:
                    task = asyncio.create_task(self._commit_one(txn))
                    self._committing[task] = txn  # also keeps the task referenced
                    task.add_done_callback(self._committing.pop)

    async def _commit_one(self, txn: PartitionTxn) -> None:
        t0 = time.monotonic()
        try:
            visible = await txn.commit()
        except Exception as exc:  # pragma: no cover - commit() turns failures into fail()
            txn.fail(exc)
            return
        if visible is None:
            return
        self._metrics.transaction_commit.observe(time.monotonic() - t0)
        self._metrics.transactions.labels("committed").inc()
        self._metrics.commits.inc()
        now = time.time()
        for outcome in visible:
            if outcome.source_ts_ms is not None:
                name = outcome.state.name
                self._metrics.e2e_latency.labels(name).observe(
                    max(0.0, now - outcome.source_ts_ms / 1000.0)
                )
                self._metrics.results_out.labels(name).inc()

    # ------------------------------------------------------------------ partitions
    async def partitions_assigned(self, tps: set[Any]) -> None:
        """Hold the new partitions, start their producers (fencing earlier owners), re-read
        their committed offsets, then release them. Waits a bounded time inside the rebalance
        callback; a partition whose producer cannot start yet stays held and keeps trying."""
        if not tps:
            return
        self.control.hold(tps)
        tasks = [self._spawn(tp, self._open(tp)) for tp in tps]
        await asyncio.wait(tasks, timeout=self._assign_wait_s)

    async def partitions_revoked(self, tps: set[Any]) -> None:
        """After the revocation's commit: stop opening or rewinding, abort what is still open
        (nothing of it was visible), close the producers."""
        closing = []
        for tp in tps:
            task = self._lifecycle.pop(tp, None)
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            txn = self._txns.pop(tp, None)
            if txn is not None:
                closing.append(txn.close(abort=True))
        await asyncio.gather(*closing)

    async def close(self) -> None:
        """Shutdown: the drain has committed; abort anything still open and close producers."""
        await self.partitions_revoked(set(self._txns) | set(self._lifecycle))

    def _spawn(self, tp: Hashable, work: Any) -> asyncio.Task[None]:
        previous = self._lifecycle.get(tp)
        if previous is not None and not previous.done():
            previous.cancel()  # the newer intent (a rewind after an open) wins
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._lifecycle[tp] = task
        task.add_done_callback(
            lambda t: self._lifecycle.pop(tp, None) if self._lifecycle.get(tp) is t else None
        )
        return task

    async def _open(self, tp: Hashable) -> None:
        """Start tp's producer, re-read its committed offset, release it; retries until it
        works, tp is revoked, or the service stops."""
        control = self.control
        stale = self._txns.pop(tp, None)  # assigned again without a revocation: never leak one
        if stale is not None:
            await stale.close(abort=True)
        while not self._flags.stopping.is_set() and control.owns(tp):
            txn = PartitionTxn(
                tp,
                self._progress.generation(tp),
                self._producers(transactional_id(self._group_id, tp)),
                group_id=self._group_id,
                on_released=self._released,
                on_failed=self._failed,
                timeout_s=self._timeout_s,
            )
            try:
                await txn.start()
                self._txns[tp] = txn
                await asyncio.wait_for(control.reposition([tp]), timeout=self._timeout_s)
            except asyncio.CancelledError:
                if self._txns.get(tp) is txn:
                    del self._txns[tp]
                await txn.close(abort=False)
                raise
            except TransactionalIdAuthorizationFailed:
                # Retrying cannot help, and a service holding its partitions idle would look
                # healthy: stop (exit 1) with the ACL it lacks.
                log.error(
                    "not authorized to use transactional id %s: grant WRITE and DESCRIBE on "
                    "TransactionalId prefix '%s-'",
                    transactional_id(self._group_id, tp), self._group_id,
                    extra={"event": "txn_unauthorized", "tp": str(tp)},
                )  # fmt: skip
                await txn.close(abort=False)
                self._flags.fail()
                return
            except Exception as exc:
                log.warning(
                    "partition not ready",
                    extra={"event": "txn_open_failed", "tp": str(tp), "error": repr(exc)},
                )
                if self._txns.get(tp) is txn:
                    del self._txns[tp]
                await txn.close(abort=False)
                await asyncio.sleep(self._retry_backoff_s)
                continue
            control.release([tp])
            return

    def _failed(self, txn: PartitionTxn, exc: BaseException) -> None:
        self._metrics.transactions.labels("failed").inc()
        log.warning(
            "transaction failed; partition resumes from its committed offset",
            extra={"event": "txn_failed", "tp": str(txn.tp), "error": repr(exc)},
        )
        if self._txns.get(txn.tp) is txn:
            self._spawn(txn.tp, self._rewind(txn))

    async def _rewind(self, txn: PartitionTxn) -> None:
        """Redo tp from its committed offset with a new producer (which fences the old one)."""
        tp = txn.tp
        self.control.hold([tp])
        if self._txns.get(tp) is txn:
            del self._txns[tp]
        await txn.close(abort=False)
        # Completions of what was fetched before now carry an old generation: ignored.
        self._progress.revoked([tp])
        self._progress.assigned([tp])
        await asyncio.sleep(self._retry_backoff_s)
        await self._open(tp)
