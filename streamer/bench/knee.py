"""Knee search: raise the offered rate until the latency target breaks, then narrow it down.

Pure (no Kafka, no clock): the harness asks `next_rate()`, measures a step, and `record()`s the
outcome. The max sustained rate for a target is the highest offered rate whose step met it.

The first step decides more than any other: a rate counts only if no lower one failed, so a
failed first step means "none met" for that target whatever the later steps show. A service's
first seconds under load are not its steady state (first batches of each shape, producer
connections, the broker's page cache), so every ramp starts after an unmeasured warm-up at the
first rate (`warmup_plan`), and a failed first step is measured once more (`retaking`) before
it may decide anything; the retake replaces it, both are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WARMUP_S = 5.0
"""Unmeasured warm-up before the first measured step; at 2-3 s (and half the first rate) a cold
first step still decided knees (issue 20: 11 ms on the first step, 7 ms on later, faster ones)."""


def warmup_plan(first_rate: float, warmup_s: float) -> tuple[float, float]:
    """(rate, seconds) of the warm-up before the first measured step: the first measured rate,
    for `warmup_s`; every contender and every variant of a run gets the same."""
    if first_rate <= 0 or warmup_s < 0:
        raise ValueError("need a positive first rate and a non-negative warm-up")
    return first_rate, warmup_s


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
        retake_first: bool = True,
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
        self.retake_first = retake_first
        self.outcomes: list[StepOutcome] = []
        """The outcomes that count, in the order measured (a retaken first step is not here)."""
        self.superseded: list[StepOutcome] = []
        """A failed first step that was measured again (its retake replaced it)."""
        self._ramping = True
        self._refined = 0

    def next_rate(self) -> float | None:
        """The next rate to measure, or None when the search is over."""
        if len(self.outcomes) + len(self.superseded) >= self.max_steps:
            return None
        if not self.outcomes:
            return min(self.start_rate, self.max_rate)
        if self.retaking:
            return self.outcomes[0].offered_rate
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

    @property
    def retaking(self) -> bool:
        """True when the next step re-measures the first one: it failed the tightest target
        (any target fails it first) and has not been retaken yet. Its retake replaces it,
        whatever either measured: the retake is not a best of two."""
        return (
            self.retake_first
            and len(self.outcomes) == 1
            and not self.superseded
            and not self.outcomes[0].meets(self.targets_ms[0])
        )

    def record(self, outcome: StepOutcome) -> None:
        """Add the outcome of the step just measured (the one `next_rate()` asked for)."""
        if self.retaking:
            self.superseded.append(self.outcomes.pop())
        self.outcomes.append(outcome)

    def max_sustained(self, target_ms: float) -> float | None:
        """Highest offered rate that met `target_ms` with no lower rate failing it first."""
        best: float | None = None
        for o in sorted(self.outcomes, key=lambda o: o.offered_rate):
            if not o.meets(target_ms):
                break
            best = o.offered_rate
        return best
