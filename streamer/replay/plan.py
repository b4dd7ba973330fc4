"""What a replay covers: per partition, a start and a stop offset, fixed before anything runs (pure).

The end is fixed when the replay is planned (the high-water mark at that moment when `--to` is
not given), so a replay always ends, and the plan is checkpointed with the progress, so a resumed
replay ends where the first run would have. Times resolve per partition with the broker's
`offsets_for_times`, which answers None past the last record: that means the end offset (aiokafka
#1067, FLINK-28185). A partition is done when the consumer's *position* reaches its stop offset,
not when a record with offset stop-1 is seen: a partition that ends in a transaction marker or a
compacted gap has no such record (FLINK-34470).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class PlanError(ValueError):
    """A replay request that cannot be planned; the message says what and how to fix it."""


@dataclass(frozen=True, order=True)
class TP:
    """A topic partition (hashable, sortable; aiokafka's TopicPartition has the same fields)."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}"


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, stop) of one partition; `stop` is exclusive (the next offset to read)."""

    start: int
    stop: int

    @property
    def count(self) -> int:
        """Offsets in the range (records, markers and gaps alike: an upper bound on records)."""
        return max(0, self.stop - self.start)


def parse_time(text: str) -> int:
    """ISO-8601 (`2026-11-30T12:00:00Z`, naive = UTC) or epoch milliseconds -> epoch ms."""
    text = text.strip()
    if re.fullmatch(r"\d{10,16}", text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise PlanError(f"{text!r} is neither ISO-8601 nor epoch milliseconds") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_offsets(spec: str) -> dict[TP, int]:
    """`topic:partition=offset,...` or a JSON file `{"topic:partition": offset, ...}`."""
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read offsets file {spec}: {exc}") from exc
        if not isinstance(raw, dict):
            raise PlanError(f"{spec}: expected an object of 'topic:partition': offset")
        items: Iterable[tuple[str, Any]] = raw.items()
    else:
        items = [
            tuple(part.rsplit("=", 1))  # type: ignore[misc]
            for part in spec.split(",")
            if part.strip()
        ]
    out: dict[TP, int] = {}
    for item in items:
        if len(item) != 2:
            raise PlanError(f"{spec!r}: expected topic:partition=offset entries")
        key, value = item
        topic, sep, partition = str(key).strip().rpartition(":")
        try:
            tp, offset = TP(topic, int(partition)), int(value)
        except (TypeError, ValueError) as exc:
            raise PlanError(f"{spec!r}: bad entry {key}={value}") from exc
        if not sep or not topic or offset < 0 or tp.partition < 0:
            raise PlanError(f"{spec!r}: bad entry {key}={value}")
        out[tp] = offset
    return out


def parse_partitions(spec: str | None) -> set[int] | None:
    """`0,2,5` -> {0, 2, 5}; None = every partition."""
    if not spec:
        return None
    try:
        return {int(p) for p in spec.split(",") if p.strip()}
    except ValueError as exc:
        raise PlanError(f"--partitions {spec!r}: expected a comma list of numbers") from exc


def resolve(
    partitions: Iterable[TP],
    begin: Mapping[TP, int],
    end: Mapping[TP, int],
    *,
    from_times: Mapping[TP, int | None] | None = None,
    to_times: Mapping[TP, int | None] | None = None,
    from_offsets: Mapping[TP, int] | None = None,
    to_offsets: Mapping[TP, int] | None = None,
) -> dict[TP, PartitionRange]:
    """Per partition [start, stop) from the broker's begin/end offsets and the request.

    `from_times`/`to_times` are `offsets_for_times` answers (None: no record at or after that
    time, i.e. the end). Without a start the range starts at the beginning, without a stop at
    the end offset as of now. Offsets must lie within [begin, end].
    """
    out: dict[TP, PartitionRange] = {}
    for tp in sorted(partitions):
        lo, hi = begin[tp], end[tp]
        start, stop = lo, hi
        if from_offsets is not None and tp in from_offsets:
            start = from_offsets[tp]
        elif from_times is not None:
            found = from_times.get(tp)
            start = hi if found is None else found
        if to_offsets is not None and tp in to_offsets:
            stop = to_offsets[tp]
        elif to_times is not None:
            found = to_times.get(tp)
            stop = hi if found is None else found
        for name, offset in (("start", start), ("stop", stop)):
            if not lo <= offset <= hi:
                raise PlanError(
                    f"{tp}: {name} offset {offset} is out of range: the partition holds "
                    f"offsets {lo}..{hi - 1} (end {hi})"
                )
        if start > stop:
            raise PlanError(f"{tp}: start offset {start} is after stop offset {stop}")
        out[tp] = PartitionRange(start, stop)
    return out


def check_offsets_known(
    requested: Mapping[TP, int] | None, partitions: Iterable[TP], flag: str
) -> None:
    """Every partition named in --from-offsets/--to-offsets must exist in the plan."""
    if not requested:
        return
    unknown = sorted(set(requested) - set(partitions))
    if unknown:
        raise PlanError(f"{flag}: no such partition in the replayed topics: {unknown[0]}")


def estimate_seconds(plan: Mapping[TP, PartitionRange], rate: float | None) -> float | None:
    """Seconds the plan takes at `rate` events/s (None without a rate)."""
    if not rate:
        return None
    return sum(r.count for r in plan.values()) / rate


def to_metadata(replay_id: str, rng: PartitionRange) -> str:
    """The plan of one partition as commit metadata (checkpointed with the progress)."""
    return json.dumps({"replay": replay_id, "start": rng.start, "stop": rng.stop}, sort_keys=True)


def from_metadata(replay_id: str, metadata: str | None) -> PartitionRange | None:
    """The plan stored by `to_metadata`, or None if the metadata is not this replay's plan."""
    try:
        doc = json.loads(metadata or "")
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("replay") != replay_id:
        return None
    try:
        return PartitionRange(int(doc["start"]), int(doc["stop"]))
    except (KeyError, TypeError, ValueError):
        return None
