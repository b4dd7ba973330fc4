"""Partitions held at a batch the consumer cannot read: when to retry, log and tell (pure).

`streamer/kafka/fetch_guard.py` turns an unreadable batch into a report on its own partition;
under the `hold` policy the intake keeps that partition where it is (nothing skipped without an
operator's say) and asks this tracker what to do next. Retries back off from `retry_s` to
`max_retry_s` (a codec library does not appear by itself, but a batch that only looked corrupt
through one broker may read fine after a leader change); the error is logged when first seen
and then at most once per `log_every_s`, so a stall stays visible without flooding the log.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from streamer.kafka.fetch_guard import UnreadableBatch


@dataclass
class Stall:
    """One held partition: the batch in front of it and the clock of its retries and logs."""

    batch: UnreadableBatch
    since: float
    retry_at: float
    backoff_s: float
    logged_at: float
    wall_since: float


class StalledPartitions:
    """What is held, since when, and which partitions are due for a retry or a log line."""

    def __init__(
        self, retry_s: float = 5.0, max_retry_s: float = 60.0, log_every_s: float = 60.0
    ) -> None:
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.log_every_s = log_every_s
        self._held: dict[Hashable, Stall] = {}

    def __bool__(self) -> bool:
        return bool(self._held)

    def __contains__(self, tp: Hashable) -> bool:
        return tp in self._held

    def get(self, tp: Hashable) -> Stall | None:
        """The stall of tp, if held."""
        return self._held.get(tp)

    def report(self, batch: UnreadableBatch, now: float, wall: float) -> tuple[Stall, bool]:
        """A report for batch.tp: (its stall, whether to log it now).

        The same batch again (a retry that failed) doubles the back-off and logs only when the
        last line is older than log_every_s; a different batch starts a new stall.
        """
        held = self._held.get(batch.tp)
        if held is not None and held.batch.first_offset == batch.first_offset:
            held.backoff_s = min(self.max_retry_s, held.backoff_s * 2)
            held.retry_at = now + held.backoff_s
            log_now = now - held.logged_at >= self.log_every_s
            if log_now:
                held.logged_at = now
            return held, log_now
        stall = Stall(batch, now, now + self.retry_s, self.retry_s, now, wall)
        self._held[batch.tp] = stall
        return stall, True

    def due(self, now: float) -> list[Hashable]:
        """Held partitions whose retry time has come (each returned once per back-off)."""
        due = [tp for tp, s in self._held.items() if now >= s.retry_at]
        for tp in due:
            self._held[tp].retry_at = float("inf")  # until the retry's outcome is reported
        return due

    def clear(self, tp: Hashable) -> Stall | None:
        """tp read past its batch (or was revoked): no longer held."""
        return self._held.pop(tp, None)

    def older_than(self, limit_s: float, now: float) -> list[Stall]:
        """Stalls held for longer than limit_s (what readiness reports)."""
        return [s for s in self._held.values() if now - s.since > limit_s]

    def held(self) -> list[Stall]:
        """Every current stall."""
        return list(self._held.values())
