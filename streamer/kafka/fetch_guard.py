"""A record batch the consumer cannot read stops its own partition, loses nothing, and says so.

aiokafka (0.14) decodes fetched record batches lazily, inside `getmany()`. When one batch cannot
be read (a codec the client lacks, a CRC mismatch, corrupt compressed data), the exception
leaves the whole `getmany()` call:

- records of *other* partitions already taken in that call are dropped although their
  positions moved past them (the next fetch starts after them: never seen, silently gone);
- records of the same partition taken before the bad batch are dropped the same way;
- the exception names no partition, and the next fetch fetches the same batch and fails again,
  so one partition's bad batch stops every partition the consumer reads (issue 19: a
  snappy/lz4/zstd producer stopped a whole route, silently, forever).

`install()` swaps two aiokafka classes for subclasses (process-wide, once) so that instead:

- the partition's records end just before the unreadable batch, and everything read before it
  is returned with the position set right after it (nothing dropped, nothing skipped);
- the partition is paused in the consumer that read it (no refetch loop against the broker)
  and an `UnreadableBatch` (partition, offset range, reason) is left on that consumer's
  partition state, where `take_unreadable()` finds it;
- every other partition goes on as if nothing happened.

What to do about the batch is the caller's decision (`streamer/pipeline/intake.py`: hold the
partition and retry, or skip the batch with a dead letter). This is the one module that reaches
into aiokafka's internals; `tests/unit/test_fetch_guard.py` pins the shapes it relies on, so an
aiokafka upgrade that changes them fails there, not in production.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer import fetcher as _fetcher
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

__all__ = ["UnreadableBatch", "install", "reports", "take_unreadable"]

_ATTR = "streamer_unreadable"  # where a report waits on aiokafka's TopicPartitionState


@dataclass(frozen=True)
class UnreadableBatch:
    """A batch that could not be read: offsets `first_offset` .. `next_offset - 1` of `tp`."""

    tp: Any
    first_offset: int
    """The first offset not returned: the consumer's position stays here."""
    next_offset: int
    """The offset after the batch: where skipping it resumes (first_offset + 1 when unknown)."""
    reason: str
    """`codec` (no library for its compression), `crc` (checksum mismatch) or `corrupt`."""
    error: str
    """The client's exception, as repr()."""


def reason_of(exc: BaseException) -> str:
    """A short, stable label for metrics: codec, crc or corrupt."""
    if isinstance(exc, UnsupportedCodecError):
        return "codec"
    if isinstance(exc, CorruptRecordException) and "crc" in str(exc).lower():
        return "crc"
    return "corrupt"


class _Reports:
    """How many reports were ever filed: a caller compares it with what it last saw, so
    checking for news costs one integer comparison per fetch."""

    count = 0


reports = _Reports()


class _BatchTap:
    """aiokafka's MemoryRecords, remembering the batch its reader took last (the bad one)."""

    def __init__(self, records: Any) -> None:
        self._records = records
        self.last: Any = None

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        self.last = None  # a batch whose header cannot be parsed stays unknown
        self.last = self._records.next_batch()
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


class GuardedPartitionRecords(_fetcher.PartitionRecords):
    """One partition's fetched records that end, instead of raising, at a batch they cannot
    read; the batch is described in `unreadable`."""

    unreadable: UnreadableBatch | None = None

    def _unpack_records(self) -> Iterator[Any]:
        tap = _BatchTap(self._records)  # type: ignore[has-type]
        self._records = tap  # the base generator reads self._records when it starts
        try:
            yield from super()._unpack_records()
        except Exception as exc:  # any batch the client cannot read: report, never raise
            first = self.next_fetch_offset
            end = tap.last.next_offset if tap.last is not None else first + 1
            self.unreadable = UnreadableBatch(
                tp=self._tp,
                first_offset=first,
                next_offset=max(int(end), first + 1),
                reason=reason_of(exc),
                error=repr(exc),
            )


class GuardedFetchResult(_fetcher.FetchResult):
    """After handing out a partition's records: if they ended at an unreadable batch, pause
    the partition in its consumer and leave the report on its state."""

    def getall(self, max_records: int | None = None) -> list[Any]:
        records = self._partition_records
        out: list[Any] = super().getall(max_records)
        self._report(records)
        return out

    def getone(self) -> Any:
        records = self._partition_records
        out = super().getone()
        self._report(records)
        return out

    def _report(self, records: Any) -> None:
        bad = getattr(records, "unreadable", None)
        if bad is None:
            return
        records.unreadable = None
        state = self._assignment.state_value(self._topic_partition)
        if state is None:
            return  # unassigned meanwhile: the next owner meets the batch itself
        state.pause()  # no refetch loop: the caller resumes it (retry) or seeks past (skip)
        setattr(state, _ATTR, bad)
        reports.count += 1


def install() -> None:
    """Make every aiokafka consumer of this process read through the guard (idempotent)."""
    _fetcher.PartitionRecords = GuardedPartitionRecords
    _fetcher.FetchResult = GuardedFetchResult


def take_unreadable(consumer: Any, tps: Iterable[Any]) -> list[UnreadableBatch]:
    """The reports waiting on these partitions of this consumer (each returned once)."""
    subscription = getattr(getattr(consumer, "_subscription", None), "subscription", None)
    assignment = getattr(subscription, "assignment", None)
    if assignment is None:
        return []
    found = []
    for tp in tps:
        state = assignment.state_value(tp)
        bad = getattr(state, _ATTR, None) if state is not None else None
        if bad is not None:
            setattr(state, _ATTR, None)
            found.append(bad)
    return found
