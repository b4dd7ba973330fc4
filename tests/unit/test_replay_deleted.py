"""The bounded source's answer to an out-of-range fetch: deleted offsets are accounted for and
checkpointed past, a truncated log is read on from its end (fake consumer, no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from streamer.pipeline.state import Progress, StopFlags
from streamer.replay.checkpoint import FileCheckpoint, Planned
from streamer.replay.plan import TP, PartitionRange
from streamer.replay.source import BoundedIntake
from streamer.replay.throttle import Throttle

TOPIC = "search.queries.v1"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeConsumer:
    """The log of each partition is [begin, end); records the seeks and pauses."""

    def __init__(self, logs: dict[Any, tuple[int, int]]) -> None:
        self.logs = logs
        self.seeks: dict[Any, int] = {}
        self.paused: set[Any] = set()

    def assignment(self) -> set[Any]:
        return set(self.logs)

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.logs[tp][0] for tp in tps}

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.logs[tp][1] for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks[tp] = offset

    def pause(self, *tps: Any) -> None:
        self.paused.update(tps)


def _intake(consumer: FakeConsumer, tmp_path: Path) -> tuple[BoundedIntake, Progress]:
    plan = {TP(TOPIC, 0): PartitionRange(0, 100), TP(TOPIC, 1): PartitionRange(0, 20)}
    planned = Planned(plan, {}, True, FileCheckpoint("r", tmp_path / "c.json"))
    progress = Progress()
    intake = BoundedIntake(
        consumer, {}, None, None, progress, None, StopFlags(),  # type: ignore[arg-type]
        max_poll_records=10, revoke_timeout_s=1.0, planned=planned, throttle=Throttle(None),
    )  # fmt: skip
    return intake, progress


async def test_deleted_offsets_are_counted_skipped_and_read_on_from_the_new_start(
    tmp_path: Path,
) -> None:
    consumer = FakeConsumer({P0: (40, 100), P1: (25, 25)})
    intake, progress = _intake(consumer, tmp_path)
    for off in (10, 11):  # read before the deletion; 11 is still in flight
        progress.track(P0, off)
    progress.watermark.done(P0, 10)
    await intake.fetch_failed(OffsetOutOfRangeError({P0: 12, P1: 0}))
    assert intake.deleted == {TP(TOPIC, 0): [(12, 40)], TP(TOPIC, 1): [(0, 20)]}
    assert intake.offsets_deleted == 48
    assert consumer.seeks == {P0: 40}  # reads on where the log now starts
    assert consumer.paused == {P1} and P1 in intake._done  # nothing of its range is left
    assert progress.watermark.commit_point(P0) == 11  # never past the record still in flight
    progress.watermark.done(P0, 11)
    assert progress.watermark.commit_point(P0) == 40
    assert progress.watermark.commit_point(P1) == 20


async def test_a_position_past_a_truncated_log_reads_on_from_its_end(tmp_path: Path) -> None:
    consumer = FakeConsumer({P0: (0, 30), P1: (0, 20)})
    intake, _ = _intake(consumer, tmp_path)
    await intake.fetch_failed(OffsetOutOfRangeError({P0: 35}))
    assert intake.deleted == {} and consumer.seeks == {P0: 30}


async def test_a_partition_no_longer_held_is_left_to_its_next_owner(tmp_path: Path) -> None:
    consumer = FakeConsumer({P1: (5, 20)})
    intake, _ = _intake(consumer, tmp_path)
    await intake.fetch_failed(OffsetOutOfRangeError({P0: 3}))
    assert intake.deleted == {} and consumer.seeks == {}
