"""The bounded source: the live intake's decode/tokenize/backpressure, over a fixed offset range.

Each partition is read from its checkpointed offset (or its plan's start) up to its stop offset;
records at or past the stop are never processed. A partition is done when the consumer's
position reaches the stop (markers and compacted gaps cannot hang it); partitions outside the
plan (a `--partitions` subset, in group mode) are done at once. When every partition this
process holds is done and acknowledged, the source asks the service to stop, and the drain
commits the last prefix: the replay exits on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from streamer.pipeline.intake import KafkaIntake
from streamer.replay.checkpoint import Planned, persist_plan
from streamer.replay.plan import TP, PartitionRange
from streamer.replay.throttle import Throttle

log = logging.getLogger("streamer.replay")


class BoundedIntake(KafkaIntake):
    """A KafkaIntake that reads planned ranges only and ends when they are read and answered."""

    def __init__(self, *args: Any, planned: Planned, throttle: Throttle, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.planned = planned
        self.plan: dict[TP, PartitionRange] = dict(planned.plan)
        self._committed = dict(planned.committed)  # where each partition resumes (checkpoint)
        self._uses_group = planned.checkpoint.uses_group
        self._throttle = throttle
        self._done: set[Any] = set()
        # Set while this process holds a settled assignment; cleared from a revocation until
        # the next assignment (an empty assignment mid-rebalance is not "done").
        self._settled = asyncio.Event()
        self.records_read = 0

    # ------------------------------------------------------------------ assignment
    async def prepare(self) -> None:
        """Checkpoint the plan, once workers and clients are up and before anything is read.

        Every check that can fail (artifact, parity, broker, topics) has passed by now, so a
        failed start writes nothing. A plan another process of this replay already stored wins.
        """
        self.planned = await persist_plan(self.planned)
        self.plan = dict(self.planned.plan)
        self._committed = dict(self.planned.committed)
        self.planned.checkpoint.bind(self._consumer, self.plan)

    def subscribe(self) -> None:
        """Join the replay's own group (split with other processes), or take every planned
        partition by hand (file checkpoint)."""
        if self._uses_group:
            self._consumer.subscribe(topics=self.topics, listener=_BoundedListener(self))
            return
        tps = [TopicPartition(tp.topic, tp.partition) for tp in sorted(self.plan)]
        self._consumer.assign(tps)  # type: ignore[attr-defined]
        self.on_assigned(set(tps))
        self._position(tps, self._committed)
        self._settled.set()

    def on_assigned_range(self, assigned: set[Any]) -> None:
        """Group mode: new partitions start where the replay group committed, which aiokafka
        does by itself (the plan's start offsets were committed before anyone joined); asking
        for committed offsets inside the rebalance callback could wait on the rebalance itself.
        Partitions outside the plan are done at once."""
        self.on_assigned(assigned)
        for tp in assigned:
            if TP(tp.topic, tp.partition) not in self.plan:
                self._finish(tp)
        self._settled.set()

    def _position(self, tps: Iterable[Any], committed: Mapping[TP, int]) -> None:
        for tp in tps:
            rng = self.plan.get(TP(tp.topic, tp.partition))
            if rng is None:
                self._finish(tp)  # not in the plan (a --partitions subset)
                continue
            offset = max(rng.start, committed.get(TP(tp.topic, tp.partition), rng.start))
            self._consumer.seek(tp, offset)
            if offset >= rng.stop:
                self._finish(tp)

    def _finish(self, tp: Any) -> None:
        self._done.add(tp)
        self._consumer.pause(tp)

    def unsettle(self) -> None:
        """A rebalance began: wait for the next assignment before judging what is left."""
        self._settled.clear()

    def forget(self, revoked: set[Any]) -> None:
        """Partitions taken away by a rebalance are no longer ours to finish."""
        self._done -= revoked

    # ------------------------------------------------------------------ reading
    async def fetch_loop(self) -> None:
        """Read the planned ranges; when this process's share is read and answered, stop."""
        while not self._flags.stopping.is_set():
            if not self._settled.is_set():
                await self._settled.wait()
                continue
            active = [tp for tp in self._consumer.assignment() if tp not in self._done]
            if not active:
                if await self._answered() and self._settled.is_set():
                    log.info("replay range read and answered", extra={"event": "replay_done"})
                    self._flags.request_stop()
                    return
                continue
            readable = self.open_partitions(active)
            if not readable:  # the route is at its in-flight bound: wait for room
                await self.wait_for_room()
                continue
            fetched = await self.fetch(readable, await self._throttle.take(self.room()))
            if fetched is None:
                continue
            now = time.monotonic()
            for tp, messages in fetched.items():
                rng = self.plan.get(TP(tp.topic, tp.partition))
                state = self._by_topic.get(tp.topic)
                if rng is None or state is None:
                    continue
                kept = [m for m in messages if m.offset < rng.stop]
                if kept:
                    self.ingest(state, tp, kept, now)
                    self._throttle.spend(len(kept))
                    self.records_read += len(kept)
            self._runner.after_fetch(now)
            self.apply_backpressure()
            await self._finish_read_partitions()

    async def _finish_read_partitions(self) -> None:
        """Mark partitions whose position reached their stop offset (markers and gaps too).

        Only partitions held right now: a partition revoked during the fetch has no position
        here (aiokafka would wait for one that never comes).
        """
        held = self._consumer.assignment()
        for tp in list(held):
            rng = self.plan.get(TP(tp.topic, tp.partition))
            if rng is None or tp in self._done or not self._settled.is_set():
                continue
            try:
                position = await asyncio.wait_for(self._consumer.position(tp), timeout=1.0)
            except (TimeoutError, KafkaError, AssertionError):
                continue  # revoked meanwhile, or not positioned yet: judged on the next turn
            if position >= rng.stop and tp in self._consumer.assignment():
                self._finish(tp)

    async def _answered(self) -> bool:
        """Flush what waits in the batchers, then whether every read record is acknowledged."""
        self._runner.flush_all(time.monotonic())
        if self._progress.pending_in(self._consumer.assignment()):
            await asyncio.sleep(0.02)
            return False
        return True


class _BoundedListener(ConsumerRebalanceListener):
    """Forwards the replay group's rebalances to the bounded source."""

    def __init__(self, intake: BoundedIntake) -> None:
        self._intake = intake

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._intake.unsettle()
        await self._intake.on_revoked(set(revoked))
        self._intake.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._intake.on_assigned_range(set(assigned))
