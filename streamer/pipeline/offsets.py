"""What is safe to commit: a contiguous-prefix watermark per partition (pure, no I/O).

Records of one partition are fetched in offset order but their results are acknowledged
by the broker in any order (batches finish out of order, DLQ records are quick). Kafka's
committed offset means "everything below this is done", so a partition may only be
committed up to its lowest offset that is still in flight. Offsets may have gaps
(compacted topics, transaction markers): committing an offset that was never fetched
is fine as long as nothing fetched below it is still pending.

Per partition the state is a deque of tracked offsets (ascending, as fetched) and the
set of those still pending. ``done()`` removes from the set and pops the deque's head
while the head is no longer pending, so every operation is amortized O(1).

Decisions:

- ``track()`` of an offset not above the partition's last tracked one raises
  ``ValueError``: it means the consumer re-read records without ``forget()`` (a seek),
  and silently accepting it could commit past work that is about to be redone.
- ``done()`` of an unknown partition, an offset never tracked, or one already done is
  ignored and returns ``False`` (counted in ``ignored``). These are normal races, not
  bugs: an acknowledgement arrives after its partition was revoked and ``forget()``
  dropped it, or a record is answered twice (result and DLQ after a partial failure).
- ``mark_committed()`` on an unknown (revoked) partition is ignored for the same
  reason: a commit can complete after the revocation.
- ``skip_to()`` declares offsets that will never be fetched as done: records the broker deleted
  (retention, DeleteRecords) before they were read. Nothing can ever answer them, so the
  commit may pass them once everything fetched below is done; the caller reports the loss.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["OffsetWatermark"]


@dataclass
class _PartitionState:
    """In-flight bookkeeping of one partition."""

    order: deque[int] = field(default_factory=deque)  # tracked, not yet popped, ascending
    pending: set[int] = field(default_factory=set)  # tracked and not done
    last_tracked: int | None = None
    committed: int | None = None  # last offset passed to mark_committed

    def commit_point(self) -> int | None:
        """Next offset to consume: the lowest pending offset, else last tracked + 1."""
        if self.order:
            return self.order[0]
        if self.last_tracked is None:
            return None
        return self.last_tracked + 1


class OffsetWatermark:
    """Tracks fetched records per partition and tells which offsets are safe to commit."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, _PartitionState] = {}
        self._total_pending = 0
        self.ignored = 0  # done() calls that matched nothing pending (late or duplicate acks)

    def track(self, tp: Hashable, offset: int) -> None:
        """Register a fetched record that enters the pipeline (offsets ascend per partition)."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        state = self._parts.get(tp)
        if state is None:
            state = self._parts[tp] = _PartitionState()
        if state.last_tracked is not None and offset <= state.last_tracked:
            raise ValueError(
                f"{tp!r}: offset {offset} tracked after {state.last_tracked}; offsets must "
                "ascend per partition (call forget() before re-reading a partition)"
            )
        state.order.append(offset)
        state.pending.add(offset)
        state.last_tracked = offset
        self._total_pending += 1

    def done(self, tp: Hashable, offset: int) -> bool:
        """Mark a record finished (result or DLQ acknowledged); False if it matched nothing."""
        state = self._parts.get(tp)
        if state is None or offset not in state.pending:
            self.ignored += 1
            return False
        state.pending.remove(offset)
        self._total_pending -= 1
        order, pending = state.order, state.pending
        while order and order[0] not in pending:
            order.popleft()
        return True

    def skip_to(self, tp: Hashable, offset: int) -> None:
        """Offsets below `offset` not tracked so far will never be fetched (deleted): treat
        them as a gap, so the commit point can reach `offset` once what is pending is done."""
        state = self._parts.get(tp)
        if state is None:
            state = self._parts[tp] = _PartitionState()
        if state.last_tracked is None or offset - 1 > state.last_tracked:
            state.last_tracked = offset - 1

    def commit_point(self, tp: Hashable) -> int | None:
        """Kafka commit offset for tp (next to consume); None if nothing was tracked."""
        state = self._parts.get(tp)
        return None if state is None else state.commit_point()

    def advanced(self) -> dict[Hashable, int]:
        """Partitions whose commit point moved past the last mark_committed, with that point."""
        moved: dict[Hashable, int] = {}
        for tp, state in self._parts.items():
            point = state.commit_point()
            if point is not None and (state.committed is None or point > state.committed):
                moved[tp] = point
        return moved

    def mark_committed(self, tp: Hashable, offset: int) -> None:
        """Record that the broker accepted a commit of offset for tp (ignored if revoked)."""
        state = self._parts.get(tp)
        if state is None:
            return
        # Commits may complete out of order; the broker keeps the latest, we keep the highest
        # so advanced() never re-offers a point that is already covered.
        if state.committed is None or offset > state.committed:
            state.committed = offset

    def pending(self, tp: Hashable | None = None) -> int:
        """Records in flight for tp, or over all partitions when tp is None."""
        if tp is None:
            return self._total_pending
        state = self._parts.get(tp)
        return 0 if state is None else len(state.pending)

    def forget(self, tp: Hashable) -> None:
        """Drop a revoked partition's state; later acks for it are ignored."""
        state = self._parts.pop(tp, None)
        if state is not None:
            self._total_pending -= len(state.pending)

    def partitions(self) -> list[Hashable]:
        """Partitions currently tracked (assigned or seen by track)."""
        return list(self._parts)
