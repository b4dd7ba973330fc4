"""When to pause fetching: a Little's-law in-flight bound with pause/resume hysteresis (pure).

Little's law: in-flight = throughput x latency. At 16,000 events/s and a 10 ms P99 budget
about 160 events are in flight per instance; admitting more only adds queueing delay, so
above that bound the consumer pauses its partitions and resumes once the pipeline drains.
Two thresholds (``high`` to pause, ``low`` to resume) keep it from flapping pause/resume
on every record around a single limit.
"""

from __future__ import annotations

import enum
import math

__all__ = ["Action", "Backpressure", "inflight_limit"]


def inflight_limit(
    target_tps: float, p99_budget_s: float, *, floor: int = 1, ceiling: int | None = None
) -> int:
    """In-flight bound from Little's law: ceil(target_tps x p99_budget_s), clamped."""
    if not (math.isfinite(target_tps) and target_tps > 0):
        raise ValueError(f"target_tps must be a positive number, got {target_tps}")
    if not (math.isfinite(p99_budget_s) and p99_budget_s > 0):
        raise ValueError(f"p99_budget_s must be a positive number, got {p99_budget_s}")
    if floor < 1:
        raise ValueError(f"floor must be >= 1, got {floor}")
    if ceiling is not None and ceiling < floor:
        raise ValueError(f"ceiling {ceiling} is below floor {floor}")
    # round() first so 16000 x 0.01 = 160.00000000000003 is 160, not 161
    limit = math.ceil(round(target_tps * p99_budget_s, 9))
    limit = max(floor, limit)
    return limit if ceiling is None else min(ceiling, limit)


class Action(enum.Enum):
    """What the consumer should do with its partitions after a decide()."""

    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"


class Backpressure:
    """Counts records in flight and says when to pause or resume fetching."""

    def __init__(self, high: int, low: int) -> None:
        if high < 1:
            raise ValueError(f"high must be >= 1, got {high}")
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got low={low} high={high}")
        self.high = high
        self.low = low
        self._inflight = 0
        self._paused = False

    @classmethod
    def for_budget(
        cls,
        target_tps: float,
        p99_budget_s: float,
        *,
        resume_fraction: float = 0.5,
        floor: int = 2,
    ) -> Backpressure:
        """Thresholds from Little's law: pause at the bound (at least `floor`), resume at a
        fraction of it."""
        if not 0 <= resume_fraction < 1:
            raise ValueError(f"resume_fraction must be in [0, 1), got {resume_fraction}")
        high = inflight_limit(target_tps, p99_budget_s, floor=max(2, floor))
        return cls(high=high, low=min(high - 1, int(high * resume_fraction)))

    def add(self, n: int = 1) -> None:
        """Count n records entering the pipeline (fetched)."""
        if n < 0:
            raise ValueError(f"add() needs n >= 0, got {n}")
        self._inflight += n

    def remove(self, n: int = 1) -> None:
        """Count n records leaving the pipeline (acknowledged or dropped)."""
        if n < 0:
            raise ValueError(f"remove() needs n >= 0, got {n}")
        if n > self._inflight:
            raise ValueError(f"remove({n}) with only {self._inflight} in flight: unbalanced")
        self._inflight -= n

    @property
    def inflight(self) -> int:
        """Records currently in flight."""
        return self._inflight

    @property
    def paused(self) -> bool:
        """Whether the last transition was a pause."""
        return self._paused

    def decide(self) -> Action:
        """PAUSE once at >= high, RESUME once at <= low (flipping state), NONE otherwise."""
        if not self._paused and self._inflight >= self.high:
            self._paused = True
            return Action.PAUSE
        if self._paused and self._inflight <= self.low:
            self._paused = False
            return Action.RESUME
        return Action.NONE
