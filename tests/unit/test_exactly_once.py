"""Exactly-once without a broker: a transactional broker model checks that every committed
transaction holds exactly the results of the offsets it commits, whatever the completion
order, commit points and crashes; and that a failed partition rewinds (hold, fence, re-read,
release) while every outcome is settled exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import ProducerFenced
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streamer.config import load_settings
from streamer.errors import ErrorCode
from streamer.pipeline.backpressure import Backpressure
from streamer.pipeline.exactly_once import TransactionalPublisher
from streamer.pipeline.linger import LingerController
from streamer.pipeline.metrics import Metrics
from streamer.pipeline.state import Progress, RouteState, StopFlags
from streamer.pipeline.transactions import Outcome, PartitionTxn, transactional_id


@dataclass(frozen=True)
class _TP:
    topic: str
    partition: int


Q0 = _TP("q", 0)
GROUP = "g"


# --------------------------------------------------------------------------- broker model
@dataclass
class FakeBroker:
    """Transactions as Kafka keeps them: a log of committed records, committed offsets, and
    per transactional id an epoch (InitProducerId bumps it and aborts the open transaction)."""

    log: list[tuple[str, bytes]] = field(default_factory=list)
    committed: dict[Any, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    aborted: int = 0


class FakeTxnProducer:
    """An AIOKafkaProducer(transactional_id) against FakeBroker; `fail_send` makes the send
    future of that value fail (as a non-retriable produce error would)."""

    def __init__(self, broker: FakeBroker, tid: str, fail_send: bytes | None = None) -> None:
        self.broker, self.tid, self.fail_send = broker, tid, fail_send
        self.epoch = -1
        self.in_txn = False
        self.pending: list[tuple[str, bytes]] = []
        self.offsets: dict[Any, int] = {}
        self.started = self.stopped = False
        self.aborts = 0

    def _check(self) -> None:
        if self.broker.epochs.get(self.tid) != self.epoch:
            raise ProducerFenced()

    async def start(self) -> None:
        self.epoch = self.broker.epochs.get(self.tid, 0) + 1
        self.broker.epochs[self.tid] = self.epoch  # fences the previous owner
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        assert not self.in_txn
        self._check()
        self.in_txn, self.pending, self.offsets = True, [], {}

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> Any:
        assert self.in_txn, "send outside a transaction"
        self._check()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if value == self.fail_send:
            fut.set_exception(RuntimeError("record too large"))
        else:
            self.pending.append((topic, value))  # in the log, invisible until the commit
            fut.set_result(None)
        return fut

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group_id: str) -> None:
        assert self.in_txn
        self._check()
        self.offsets = {(group_id, tp): off for tp, off in offsets.items()}

    async def commit_transaction(self) -> None:
        assert self.in_txn
        self._check()
        self.broker.log += self.pending
        self.broker.committed.update(self.offsets)
        self.in_txn = False

    async def abort_transaction(self) -> None:
        self.aborts += 1
        self.in_txn = False
        self.broker.aborted += 1


def _value(offset: int) -> bytes:
    return f"r{offset}".encode()


def _visible_offsets(broker: FakeBroker) -> list[int]:
    return [int(v[1:]) for _, v in broker.log]


# --------------------------------------------------------------------------- states
def _state(route: str = "intent") -> RouteState:
    handler = SimpleNamespace(
        route=route,
        result_topic="results",
        model=SimpleNamespace(name="m", version="v", variant="fp32", target="cpu"),
    )
    return RouteState(
        handler=handler,  # type: ignore[arg-type]
        batcher=None,  # type: ignore[arg-type]
        linger=LingerController(0.01, max_linger_s=0.002),
        backpressure=Backpressure(high=10_000, low=5_000),
        p99_target_s=0.01,
    )


def _outcome(state: RouteState, offset: int, settled: list[int]) -> Outcome:
    state.backpressure.add(1)

    def done() -> None:
        settled.append(offset)
        state.backpressure.remove(1)

    return Outcome(state, [("results", None, _value(offset), None)], done, 0)


def _txn(broker: FakeBroker, failures: list[BaseException]) -> PartitionTxn:
    return PartitionTxn(
        Q0, 1, FakeTxnProducer(broker, transactional_id(GROUP, Q0)), group_id=GROUP,
        on_released=lambda outcomes, s: None, on_failed=lambda txn, exc: failures.append(exc),
        timeout_s=5.0,
    )  # fmt: skip


# --------------------------------------------------------------------------- properties
@st.composite
def _runs(draw: st.DrawFn) -> tuple[int, list[int], list[bool], int | None]:
    n = draw(st.integers(1, 40))
    order = draw(st.permutations(range(n)))
    commits = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    crash_after = draw(st.none() | st.integers(0, n - 1))
    return n, list(order), commits, crash_after


@settings(max_examples=200, deadline=None)
@given(_runs())
def test_a_committed_transaction_holds_exactly_the_offsets_it_commits(
    run: tuple[int, list[int], list[bool], int | None],
) -> None:
    """Completions in any order, commits at any point, an instance crash at any point (its
    open transaction left behind) and a new owner resuming from the committed offset: at every
    commit the visible results are exactly the offsets below the committed one, and in the end
    every offset is visible exactly once."""
    n, order, commits, crash_after = run
    asyncio.run(_run_model(n, order, commits, crash_after))


async def _run_model(n: int, order: list[int], commits: list[bool], crash: int | None) -> None:
    broker = FakeBroker()
    state = _state()
    settled: list[int] = []
    failures: list[BaseException] = []

    def invariant() -> None:
        point = broker.committed.get((GROUP, Q0), 0)
        assert _visible_offsets(broker) == list(range(point))

    txn = _txn(broker, failures)
    await txn.start()
    for offset in range(n):
        txn.track(offset)
    for step, offset in enumerate(order):
        assert txn.accept(offset, _outcome(state, offset, settled))
        await txn.flush()
        if commits[step]:
            await txn.commit()
            invariant()
        if crash is not None and step == crash:
            break  # SIGKILL: the open transaction and the held outcomes are left behind
    else:
        await txn.commit()
        invariant()
        assert _visible_offsets(broker) == list(range(n))
        assert sorted(settled) == list(range(n)) and state.backpressure.inflight == 0
        return
    # The next owner: its InitProducerId fences the crashed one and aborts its transaction;
    # it resumes from the committed offset and completes the rest in another order.
    resumed = broker.committed.get((GROUP, Q0), 0)
    new = _txn(broker, failures)
    await new.start()
    for offset in range(resumed, n):
        new.track(offset)
    for offset in sorted(range(resumed, n), key=lambda o: order.index(o)):
        assert new.accept(offset, _outcome(state, offset, settled))
        await new.flush()
    await new.commit()
    invariant()
    assert _visible_offsets(broker) == list(range(n))  # each exactly once
    # The crashed instance's late commit is fenced: nothing of it becomes visible.
    assert await txn.commit() is None or not txn.has_open_transaction
    assert _visible_offsets(broker) == list(range(n))
    assert not failures or all(isinstance(f, ProducerFenced) for f in failures)


async def test_a_failed_send_is_never_committed_past() -> None:
    """aiokafka commits a transaction even when one of its sends failed; PartitionTxn checks
    every send first: nothing of the transaction is committed and the partition fails."""
    broker = FakeBroker()
    failures: list[BaseException] = []
    state = _state()
    settled: list[int] = []
    txn = _txn(broker, failures)
    txn._producer.fail_send = _value(2)  # type: ignore[attr-defined]
    await txn.start()
    for offset in range(5):
        txn.track(offset)
    for offset in (1, 0, 4, 3, 2):
        txn.accept(offset, _outcome(state, offset, settled))
        await txn.flush()
    assert failures and txn.failed is not None
    assert await txn.commit() is None
    assert broker.log == [] and broker.committed == {}
    assert sorted(settled) == [0, 1, 2, 3, 4] and state.backpressure.inflight == 0


async def test_held_outcomes_are_settled_when_the_partition_closes() -> None:
    broker = FakeBroker()
    state = _state()
    settled: list[int] = []
    txn = _txn(broker, [])
    await txn.start()
    for offset in range(3):
        txn.track(offset)
    txn.accept(2, _outcome(state, 2, settled))
    txn.accept(1, _outcome(state, 1, settled))
    await txn.flush()  # 0 is still in the model: nothing released
    assert broker.log == [] and settled == []
    await txn.close(abort=True)
    assert sorted(settled) == [1, 2] and state.backpressure.inflight == 0
    assert not txn.accept(0, _outcome(state, 0, settled))  # closed: the caller settles it


# --------------------------------------------------------------------------- publisher
class FakeControl:
    """The intake's side of a partition, recording what exactly-once asked of it."""

    def __init__(self, assigned: Iterable[Any]) -> None:
        self.assigned = set(assigned)
        self.calls: list[tuple[str, Any]] = []

    def hold(self, tps: Iterable[Any]) -> None:
        self.calls += [("hold", tp) for tp in tps]

    def release(self, tps: Iterable[Any]) -> None:
        self.calls += [("release", tp) for tp in tps]

    async def reposition(self, tps: Iterable[Any]) -> None:
        self.calls += [("reposition", tp) for tp in tps]

    def owns(self, tp: Any) -> bool:
        return tp in self.assigned


def _publisher(broker: FakeBroker, producers: list[FakeTxnProducer]) -> TransactionalPublisher:
    def factory(tid: str) -> FakeTxnProducer:
        producers.append(FakeTxnProducer(broker, tid))
        return producers[-1]

    return TransactionalPublisher(
        factory, Progress(), Metrics(), StopFlags(), dlq_topic="dlq", group_id=GROUP,
        timeout_s=5.0, retry_backoff_s=0.0,
    )  # fmt: skip


def _message(offset: int) -> Any:
    return SimpleNamespace(
        offset=offset, timestamp=0, key=f"k{offset}".encode(), value=b"{bad", headers=()
    )


async def _wait(predicate: Any, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def test_assignment_holds_fences_repositions_then_releases() -> None:
    broker = FakeBroker()
    broker.epochs[transactional_id(GROUP, Q0)] = 7  # an earlier owner's producer
    producers: list[FakeTxnProducer] = []
    publisher = _publisher(broker, producers)
    control = FakeControl([Q0])
    publisher.bind(control)
    publisher._progress.assigned([Q0])
    await publisher.partitions_assigned({Q0})
    assert control.calls == [("hold", Q0), ("reposition", Q0), ("release", Q0)]
    assert producers[0].tid == "g-q-0" and producers[0].epoch == 8  # the old one is fenced


async def test_a_failed_partition_rewinds_and_late_completions_are_dropped() -> None:
    """A send fails: the partition is held, its producer replaced (fencing the old one), the
    generation bumped, the consumer repositioned, then released; completions fetched before
    the failure are settled but never sent."""
    broker = FakeBroker()
    producers: list[FakeTxnProducer] = []
    publisher = _publisher(broker, producers)
    control = FakeControl([Q0])
    publisher.bind(control)
    progress = publisher._progress
    progress.assigned([Q0])
    await publisher.partitions_assigned({Q0})
    state = _state()
    generation = progress.generation(Q0)
    for offset in range(4):
        state.backpressure.add(1)
        assert progress.track(Q0, offset) == generation
    producers[0].fail_send = b"x"
    producers[0].pending = []
    # Dead letters of offsets 0 and 1 go out and commit; offset 2's send fails.
    for offset in (1, 0):
        publisher.dead_letter_message(
            state, Q0, generation, _message(offset), ErrorCode.NOT_JSON, "bad"
        )
    await _wait(lambda: progress.watermark.pending(Q0) == 2)
    await publisher.commit()
    assert broker.committed == {(GROUP, Q0): 2} and len(broker.log) == 2
    original = producers[0]
    original.fail_send = None

    async def failing_send(*args: Any, **kwargs: Any) -> Any:
        raise ProducerFenced()

    original.send = failing_send  # type: ignore[method-assign]
    publisher.dead_letter_message(state, Q0, generation, _message(2), ErrorCode.NOT_JSON, "bad")
    await _wait(lambda: len(producers) == 2 and ("release", Q0) in control.calls[3:])
    assert control.calls[3:] == [("hold", Q0), ("reposition", Q0), ("release", Q0)]
    assert original.stopped and producers[1].epoch == original.epoch + 1
    assert progress.generation(Q0) > generation  # completions fetched before are void
    # Offset 3 was fetched before the failure: its completion is settled, never sent.
    publisher.dead_letter_message(state, Q0, generation, _message(3), ErrorCode.NOT_JSON, "bad")
    await _wait(lambda: state.backpressure.inflight == 0)
    await publisher.commit()
    assert broker.committed == {(GROUP, Q0): 2} and len(broker.log) == 2
    await publisher.close()
    assert producers[1].stopped


async def test_revocation_commits_nothing_more_and_aborts_what_is_open() -> None:
    broker = FakeBroker()
    producers: list[FakeTxnProducer] = []
    publisher = _publisher(broker, producers)
    publisher.bind(FakeControl([Q0]))
    progress = publisher._progress
    progress.assigned([Q0])
    await publisher.partitions_assigned({Q0})
    state = _state()
    generation = progress.generation(Q0)
    state.backpressure.add(1)
    progress.track(Q0, 0)
    publisher.dead_letter_message(state, Q0, generation, _message(0), ErrorCode.NOT_JSON, "bad")
    await _wait(lambda: state.backpressure.inflight == 0)
    assert producers[0].in_txn  # released into the open transaction, not committed yet
    await publisher.partitions_revoked({Q0})
    assert producers[0].aborts == 1 and producers[0].stopped and broker.log == []


def test_transactional_id_is_stable_per_input_partition() -> None:
    assert transactional_id("streamer", _TP("search.queries.v1", 3)) == (
        "streamer-search.queries.v1-3"
    )


def test_exactly_once_settings_are_checked() -> None:
    s = load_settings(delivery="exactly-once")
    assert s.transaction_interval_ms == 100 and s.transaction_timeout_ms == 10_000
    with pytest.raises(ValidationError, match="idempotence"):
        load_settings(delivery="exactly-once", producer_idempotence=False)
    with pytest.raises(ValidationError, match="twice"):
        load_settings(delivery="exactly-once", transaction_interval_ms=5000,
                      transaction_timeout_ms=6000)  # fmt: skip
    with pytest.raises(ValidationError):
        load_settings(delivery="exactly-twice")


# --------------------------------------------------------------------------- downstream
def test_the_benchmark_judges_exactly_once_by_when_results_are_readable() -> None:
    """An exactly-once result's broker append time is when it entered its transaction; the
    knee search must use when the read_committed sink saw it."""
    from streamer.bench.harness import outcome_of

    step = {
        "offered_rate": 100.0,
        "sink": {
            "broker": {"p99_ms": 8.0, "count": 1000},
            "observed": {"p99_ms": 120.0, "count": 1000},
            "missing": 0,
        },
        "contender_alive": True,
        "load": {"fell_behind": False},
    }
    assert outcome_of(step).p99_ms == 8.0
    assert outcome_of({**step, "clock": "observed"}).p99_ms == 120.0


def test_tail_and_the_sink_read_committed_by_default() -> None:
    import argparse

    from streamer.bench.sink import Sink
    from streamer.bench.tail import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--topic", "t"]).isolation_level == "read_committed"
    args = parser.parse_args(["--topic", "t", "--isolation-level", "read_uncommitted"])
    assert args.isolation_level == "read_uncommitted"
    assert Sink("b", "t").isolation_level == "read_committed"


async def test_a_missing_transactional_id_acl_stops_the_service() -> None:
    """Retrying cannot grant an ACL; a service holding its partitions idle would look healthy."""
    from aiokafka.errors import TransactionalIdAuthorizationFailed

    class Unauthorized(FakeTxnProducer):
        async def start(self) -> None:
            raise TransactionalIdAuthorizationFailed(self.tid)

    flags = StopFlags()
    publisher = TransactionalPublisher(
        lambda tid: Unauthorized(FakeBroker(), tid), Progress(), Metrics(), flags,
        dlq_topic="dlq", group_id=GROUP, timeout_s=5.0, retry_backoff_s=0.0,
    )  # fmt: skip
    control = FakeControl([Q0])
    publisher.bind(control)
    await publisher.partitions_assigned({Q0})
    assert flags.exit_code == 1 and flags.stopping.is_set()
    assert ("release", Q0) not in control.calls


async def test_a_slow_commit_holds_back_neither_other_partitions_nor_the_next_tick() -> None:
    """Each partition commits on its own: one whose EndTxn hangs (its broker away) does not
    keep the others' transactions open towards their timeout."""
    broker = FakeBroker()
    q1 = _TP("q", 1)
    hang = asyncio.Event()

    class Hanging(FakeTxnProducer):
        async def commit_transaction(self) -> None:
            await hang.wait()
            await super().commit_transaction()

    def factory(tid: str) -> FakeTxnProducer:
        return (Hanging if tid.endswith("-0") else FakeTxnProducer)(broker, tid)

    flags = StopFlags()
    publisher = TransactionalPublisher(
        factory, Progress(), Metrics(), flags, dlq_topic="dlq", group_id=GROUP, timeout_s=30.0,
        retry_backoff_s=0.0,
    )  # fmt: skip
    publisher.bind(FakeControl([Q0, q1]))
    progress = publisher._progress
    progress.assigned([Q0, q1])
    await publisher.partitions_assigned({Q0, q1})
    state = _state()
    loop = asyncio.create_task(publisher.commit_loop(0.01))
    for round_ in range(3):
        for tp in (Q0, q1):
            state.backpressure.add(1)
            generation = progress.track(tp, round_)
            publisher.dead_letter_message(
                state, tp, generation, _message(round_), ErrorCode.NOT_JSON, "bad"
            )
        await _wait(lambda r=round_: broker.committed.get((GROUP, q1)) == r + 1)
    assert (GROUP, Q0) not in broker.committed  # still hanging in its first commit
    hang.set()
    await _wait(lambda: broker.committed.get((GROUP, Q0)) == 3)
    flags.request_stop()
    await loop
    await publisher.close()
