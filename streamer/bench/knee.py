"""Knee search: raise the offered rate until the latency target breaks, then narrow it down.

Pure (no Kafka, no clock): the harness asks `next_rate()`, measures a step, and `record()`s the
outcome. The max sustained rate for a target is the highest offered rate whose step met it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepOutcome:
    """What one fixed-rate step measured."""

    offered_rate: float
    p99_ms: float
    missing: int
    generator_behind: bool = False

    def meets(self, target_ms: float) -> bool:
        """Every result came back, the generator held its schedule, and P99 is within target."""
        return (
            self.missing == 0
            and not self.generator_behind
            and not math.isnan(self.p99_ms)
            and self.p99_ms <= target_ms
        )


class KneeSearch:
    """Geometric ramp until the loosest target fails, then bisection on the tightest target."""

    def __init__(
        self,
        targets_ms: tuple[float, ...],
        start_rate: float,
        growth: float = 2.0,
        max_rate: float = 1_000_000.0,
        refine_steps: int = 0,
        max_steps: int = 12,
        patience: int = 0,
    ) -> None:
        if not targets_ms or start_rate <= 0 or growth <= 1.0:
            raise ValueError("need targets, a positive start rate and growth > 1")
        self.targets_ms = tuple(sorted(targets_ms))
        self.start_rate = start_rate
        self.growth = growth
        self.max_rate = max_rate
        self.refine_steps = refine_steps
        self.max_steps = max_steps
        self.patience = patience  # failing ramp steps tolerated (a noisy shared machine)
        self.outcomes: list[StepOutcome] = []
        self._ramping = True
        self._refined = 0

    def next_rate(self) -> float | None:
        """The next rate to measure, or None when the search is over."""
        if len(self.outcomes) >= self.max_steps:
            return None
        if not self.outcomes:
            return min(self.start_rate, self.max_rate)
        last = self.outcomes[-1]
        if self._ramping:
            loosest = self.targets_ms[-1]
            nxt = last.offered_rate * self.growth
            failed = 0
            for o in reversed(self.outcomes):  # consecutive failures at the top of the ramp
                if o.meets(loosest):
                    break
                failed += 1
            if failed <= self.patience and not last.generator_behind and nxt <= self.max_rate:
                return nxt
            self._ramping = False
        return self._refine_rate()

    def _refine_rate(self) -> float | None:
        if self._refined >= self.refine_steps:
            return None
        tight = self.targets_ms[0]
        ok = [o.offered_rate for o in self.outcomes if o.meets(tight)]
        bad = [o.offered_rate for o in self.outcomes if not o.meets(tight)]
        if not ok or not bad:
            return None
        lo = max(ok)
        above = [r for r in bad if r > lo]
        if not above or min(above) / lo < 1.1:  # within 10%: more steps only measure noise
            return None
        hi = min(above)
        self._refined += 1
        return math.sqrt(lo * hi)

    def record(self, outcome: StepOutcome) -> None:
        """Add the outcome of the step just measured."""
        self.outcomes.append(outcome)

    def max_sustained(self, target_ms: float) -> float | None:
        """Highest offered rate that met `target_ms` with no lower rate failing it first."""
        best: float | None = None
        for o in sorted(self.outcomes, key=lambda o: o.offered_rate):
            if not o.meets(target_ms):
                break
            best = o.offered_rate
        return best
