"""Where a replay keeps its plan and progress, so a killed replay resumes with no gap.

Kafka (default): the replay's own consumer group, `streamer-replay-<replay id>`, never the live
service's. Its committed offset per partition is the acknowledged prefix (what the publisher
commits, as the live service does) and its commit metadata carries that partition's plan
(`plan.to_metadata`), so the plan survives with the progress and every process of one replay id
reads the same one. Several processes with one replay id share the group and split its
partitions. The plan is written once, before consuming, by a commit outside the group (allowed
while the group has no members); a process that finds a plan already there uses it.

File (`--checkpoint FILE`): the same plan and offsets in a JSON file, replaced atomically; one
process, partitions assigned by hand (no group at all).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streamer.replay.plan import TP, PartitionRange, PlanError, from_metadata, to_metadata

PLAN_WAIT_TRIES = 20  # x 0.5 s: how long a second process waits for the first one's plan


def group_id(replay_id: str) -> str:
    """The replay's consumer group: derived from the replay id, never the live group."""
    return f"streamer-replay-{replay_id}"


class KafkaCheckpoint:
    """Plan and progress in the replay group's committed offsets and their metadata."""

    uses_group = True

    def __init__(self, replay_id: str, client_kwargs: Mapping[str, Any]) -> None:
        self.replay_id = replay_id
        self.group = group_id(replay_id)
        self._client = dict(client_kwargs)
        self.plan: dict[TP, PartitionRange] = {}
        self._consumer: Any = None  # the replay's group consumer, set by bind()

    async def load(self, topics: set[str]) -> tuple[dict[TP, PartitionRange], dict[TP, int]]:
        """(stored plan, committed offsets) of the replay group for these topics ({} if new)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**self._client)
        await admin.start()
        try:
            stored = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        plan: dict[TP, PartitionRange] = {}
        committed: dict[TP, int] = {}
        for tp, meta in stored.items():
            if tp.topic not in topics:
                continue
            key = TP(tp.topic, tp.partition)
            rng = from_metadata(self.replay_id, meta.metadata)
            if rng is not None:
                plan[key] = rng
                committed[key] = meta.offset
        return plan, committed

    async def write_plan(self, plan: Mapping[TP, PartitionRange]) -> bool:
        """Commit each partition's start offset with its plan; False if the group is busy."""
        from aiokafka.errors import KafkaError

        # A group with members refuses the commit; that is expected here (another process of
        # this replay planned first), so aiokafka's error lines about it are kept out of the log.
        # (Its describe_consumer_groups cannot decode Kafka 4's answer, so it cannot ask first.)
        coordinator_log = logging.getLogger("aiokafka.consumer.group_coordinator")
        level = coordinator_log.level
        coordinator_log.setLevel(logging.CRITICAL)
        consumer = AIOKafkaConsumer(group_id=self.group, enable_auto_commit=False, **self._client)
        await consumer.start()
        try:
            tps = [TopicPartition(tp.topic, tp.partition) for tp in plan]
            consumer.assign(tps)
            await consumer.commit(
                {
                    TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                        rng.start, to_metadata(self.replay_id, rng)
                    )
                    for tp, rng in plan.items()
                }
            )
            return True
        except KafkaError:
            return False  # members are in the group: another process of this replay planned
        finally:
            await consumer.stop()
            coordinator_log.setLevel(level)

    def bind(self, consumer: Any, plan: Mapping[TP, PartitionRange]) -> None:
        """Use the replay's consumer for progress commits, with the plan as metadata."""
        self._consumer = consumer
        self.plan = dict(plan)

    async def commit(self, points: dict[Any, int]) -> None:
        """Commit the acknowledged prefix; each partition's plan rides along as metadata."""
        await self._consumer.commit(
            {
                tp: OffsetAndMetadata(
                    offset, to_metadata(self.replay_id, self.plan[TP(tp.topic, tp.partition)])
                )
                for tp, offset in points.items()
            }
        )


class FileCheckpoint:
    """Plan and progress in a JSON file (one process, no consumer group)."""

    uses_group = False

    def __init__(self, replay_id: str, path: Path) -> None:
        self.replay_id = replay_id
        self.group = None
        self.path = Path(path)
        self.plan: dict[TP, PartitionRange] = {}
        self._committed: dict[TP, int] = {}

    async def load(self, topics: set[str]) -> tuple[dict[TP, PartitionRange], dict[TP, int]]:
        """(stored plan, committed offsets) from the file, ({}, {}) if it does not exist."""
        if not self.path.exists():
            return {}, {}
        doc = json.loads(self.path.read_text())
        if doc.get("replay") != self.replay_id:
            raise ValueError(
                f"{self.path} is the checkpoint of replay {doc.get('replay')!r}, "
                f"not {self.replay_id!r}"
            )
        plan, committed = {}, {}
        for key, entry in doc["partitions"].items():
            topic, _, partition = key.rpartition(":")
            if topic in topics:
                tp = TP(topic, int(partition))
                plan[tp] = PartitionRange(int(entry["start"]), int(entry["stop"]))
                committed[tp] = int(entry["committed"])
        self.plan, self._committed = dict(plan), dict(committed)
        return plan, committed

    async def write_plan(self, plan: Mapping[TP, PartitionRange]) -> bool:
        """Write the plan with every partition at its start."""
        self.plan = dict(plan)
        self._committed = {tp: rng.start for tp, rng in plan.items()}
        self._save()
        return True

    def bind(self, consumer: Any, plan: Mapping[TP, PartitionRange]) -> None:
        """Keep the plan (and the progress read at load) for the commits to come."""
        self.plan = dict(plan)
        for tp, rng in plan.items():
            self._committed.setdefault(tp, rng.start)

    async def commit(self, points: dict[Any, int]) -> None:
        """Record the acknowledged prefix and replace the file atomically."""
        for tp, offset in points.items():
            self._committed[TP(tp.topic, tp.partition)] = offset
        self._save()

    def _save(self) -> None:
        doc = {
            "replay": self.replay_id,
            "partitions": {
                str(tp): {
                    "start": rng.start,
                    "stop": rng.stop,
                    "committed": self._committed.get(tp, rng.start),
                }
                for tp, rng in sorted(self.plan.items())
            },
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.path)


Checkpoint = KafkaCheckpoint | FileCheckpoint


@dataclass
class Planned:
    """The ranges to replay, where each resumes, and whether this is a resumed replay."""

    plan: dict[TP, PartitionRange]
    committed: dict[TP, int]
    resumed: bool
    checkpoint: Checkpoint

    def remaining(self, tp: TP) -> int:
        """Offsets of `tp` not yet acknowledged (checkpointed)."""
        rng = self.plan[tp]
        return max(0, rng.stop - max(rng.start, self.committed.get(tp, rng.start)))

    def rows(self) -> list[dict[str, Any]]:
        """Per partition: start, stop, offsets in range, resume point, offsets remaining."""
        return [
            {
                "partition": str(tp),
                "start": rng.start,
                "stop": rng.stop,
                "offsets": rng.count,
                "resume_at": max(rng.start, self.committed.get(tp, rng.start)),
                "remaining": self.remaining(tp),
            }
            for tp, rng in sorted(self.plan.items())
        ]


async def persist_plan(planned: Planned) -> Planned:
    """Checkpoint a new plan before anything is consumed; adopt a concurrent process's plan."""
    if planned.resumed:
        return planned
    if await planned.checkpoint.write_plan(planned.plan):
        return planned
    # Another process of this replay holds the group; its plan may still be on its way.
    for _ in range(PLAN_WAIT_TRIES):
        stored, committed = await planned.checkpoint.load({tp.topic for tp in planned.plan})
        if stored:  # the same replay, planned by its first process a moment ago
            return Planned(stored, committed, False, planned.checkpoint)
        await asyncio.sleep(0.5)
    raise PlanError("the replay group is busy but holds no plan: is another replay running?")
