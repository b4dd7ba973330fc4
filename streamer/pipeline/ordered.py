"""Ordered release: outcomes leave in offset order, never past an offset still in flight (pure).

Exactly-once delivery commits one input partition's results and its input offset in one Kafka
transaction. The committed offset means "everything below is answered", so a committed
transaction must hold exactly the results of the offsets below the offset it commits: a result
of an offset above it would be visible now *and* be produced again by whoever resumes from that
offset after a crash. Batches finish out of order (pairs are grouped by length, a failed batch
is bisected, a dead letter is quick), so a result may be ready while a lower offset of its
partition is still in the model. `OrderedRelease` holds such a result back until every lower
fetched offset of the partition has its outcome, then releases the contiguous run in offset
order. Whatever has been released is a prefix of the fetched offsets, and the transaction
commits the offset just past the last released one (`point`).

The cost is head-of-line waiting inside a partition: a short pair waits for the long pair
fetched before it. Queries are batched in arrival order, so for intents the hold is about zero.

Decisions:

- ``track()`` of an offset not above the last tracked one raises ``ValueError`` (the caller
  re-reads a partition only after ``reset``, as with `offsets.OffsetWatermark`).
- ``complete()`` of an offset never tracked, or already completed, returns ``False`` and keeps
  nothing: the caller still owes that completion its bookkeeping (the record is not lost and
  not answered twice: the first outcome wins).
- ``reset()`` drops everything (a rewind or a revocation) and returns the held outcomes, whose
  bookkeeping the caller settles.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["OrderedRelease"]

T = TypeVar("T")

_PENDING = object()  # a tracked offset with no outcome yet


class OrderedRelease(Generic[T]):
    """One partition: tracked offsets in fetch order, outcomes released as a contiguous prefix."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # tracked, not yet released, ascending
        self._outcome: dict[int, object] = {}  # offset -> outcome or _PENDING, for _order
        self._last_tracked: int | None = None
        self.point: int | None = None  # one past the last released offset (None: none yet)

    def track(self, offset: int) -> None:
        """A fetched offset enters (offsets ascend); it must complete before anything above."""
        if self._last_tracked is not None and offset <= self._last_tracked:
            raise ValueError(
                f"offset {offset} tracked after {self._last_tracked}; offsets must ascend "
                "(reset() before re-reading a partition)"
            )
        self._order.append(offset)
        self._outcome[offset] = _PENDING
        self._last_tracked = offset

    def complete(self, offset: int, outcome: T) -> bool:
        """Give a tracked offset its outcome; False if it was unknown or already completed."""
        if self._outcome.get(offset, None) is not _PENDING:
            return False
        self._outcome[offset] = outcome
        return True

    def release(self) -> list[tuple[int, T]]:
        """Pop the completed run at the head, in offset order, and advance `point` past it."""
        out: list[tuple[int, T]] = []
        order, outcomes = self._order, self._outcome
        while order and outcomes[order[0]] is not _PENDING:
            offset = order.popleft()
            out.append((offset, outcomes.pop(offset)))  # type: ignore[arg-type]
        if out:
            self.point = out[-1][0] + 1
        return out

    def pending(self) -> int:
        """Tracked offsets not yet released (in flight or held)."""
        return len(self._order)

    def held(self) -> int:
        """Completed offsets waiting for a lower one."""
        return sum(1 for v in self._outcome.values() if v is not _PENDING)

    def reset(self) -> list[T]:
        """Forget everything (rewind or revocation); returns the outcomes that were held."""
        held = [v for v in self._outcome.values() if v is not _PENDING]
        self._order.clear()
        self._outcome.clear()
        self._last_tracked = None
        self.point = None
        return held  # type: ignore[return-value]
