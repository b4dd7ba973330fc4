"""The bounded source: the live intake's decode/tokenize/backpressure, over a fixed offset range.

Each partition is read from its checkpointed offset (or its plan's start) up to its stop offset;
records at or past the stop are never processed. A partition is done when the consumer's
position reaches the stop (markers and compacted gaps cannot hang it); partitions outside the
plan (a `--partitions` subset, in group mode) are done at once. When every partition this
process holds is done and acknowledged, the source asks the service to stop, and the drain
commits the last prefix: the replay exits on its own.

Records of the range that the broker deletes before the replay reads them (retention passing
over an old range, DeleteRecords) cannot be answered by anyone. The consumer has no automatic
offset reset, so their absence surfaces as an out-of-range fetch: the replay logs and counts the
lost offsets, checkpoints past them and reads on from the log's new start, and the command ends
with its own exit code. (With the consumer's usual reset to "earliest" they vanished unseen: a
replay then reported success with part of its range unanswered.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

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
        # Per partition, the [from, to) offset ranges the broker deleted before they were read.
        self.deleted: dict[TP, list[tuple[int, int]]] = {}

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
            if not await self.resolve_schemas(fetched):
                break  # stopping while the schema registry is away: nothing tracked
            fetched_at, wall = time.monotonic(), time.time()
            for tp, messages in fetched.items():
                rng = self.plan.get(TP(tp.topic, tp.partition))
                state = self._by_topic.get(tp.topic)
                if rng is None or state is None:
                    continue
                kept = [m for m in messages if m.offset < rng.stop]
                if kept:
                    self.ingest(state, tp, kept, fetched_at=fetched_at, fetched_wall=wall)
                    self._throttle.spend(len(kept))
                    self.records_read += len(kept)
            self._runner.after_fetch(time.monotonic())
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

    # ------------------------------------------------------------------ deleted records
    @property
    def offsets_deleted(self) -> int:
        """Offsets of the planned ranges that were deleted before this process read them."""
        return sum(stop - start for ranges in self.deleted.values() for start, stop in ranges)

    async def fetch_failed(self, exc: KafkaError) -> None:
        """An out-of-range position: records were deleted under the replay (or, past the log
        end, the log was truncated). Anything else: the intake's log and back-off."""
        positions = exc.args[0] if exc.args else None
        if not isinstance(exc, OffsetOutOfRangeError) or not isinstance(positions, dict):
            await super().fetch_failed(exc)
            return
        for tp, offset in positions.items():
            await self._read_on_after_deletion(tp, offset)

    async def _read_on_after_deletion(self, tp: Any, offset: int) -> None:
        """Account for the deleted offsets [offset, new log start) of the planned range and read
        on from the new start (or finish the partition when its whole rest is gone)."""
        key = TP(tp.topic, tp.partition)
        rng = self.plan.get(key)
        if rng is None or tp not in self._consumer.assignment():
            return
        try:
            begin = (await self._consumer.beginning_offsets([tp]))[tp]
            end = (await self._consumer.end_offsets([tp]))[tp]
        except KafkaError as exc:  # the position is unchanged: the next fetch fails and retries
            await super().fetch_failed(exc)
            return
        if tp not in self._consumer.assignment():
            return  # revoked meanwhile: the next owner meets the same error and accounts for it
        if offset >= begin:
            # Past the end: the log was truncated (an unclean leader change). Nothing known lost.
            log.warning(
                "replay position past the log end; reading on from the end",
                extra={"event": "replay_log_truncated", "partition": str(key),
                       "position": offset, "log_end": end},
            )  # fmt: skip
            self._consumer.seek(tp, min(offset, end))
            return
        lost_to = min(begin, rng.stop)
        self.deleted.setdefault(key, []).append((offset, lost_to))
        log.error(
            "records of the replayed range were deleted before they were read",
            extra={"event": "replay_records_deleted", "partition": str(key),
                   "from_offset": offset, "to_offset": lost_to, "log_start": begin},
        )  # fmt: skip
        self._progress.watermark.skip_to(tp, lost_to)  # committed past once the rest is done
        if begin >= rng.stop:
            self._finish(tp)
        else:
            self._consumer.seek(tp, begin)

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
