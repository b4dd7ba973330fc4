"""Adaptive linger: what is left of the P99 latency budget after the other stages (pure).

An event's end-to-end latency is fetch + linger + queue + model + produce. Every stage but
the linger is measured; the batcher may wait for more rows only as long as the budget
leaves room::

    linger = clamp(safety x p99_target - sum(p99 of each observed stage), min, max)

``safety`` (0.8) keeps a margin because the sum of per-stage P99s is not the P99 of the
sum and the next batch may be slower than the window. Each stage keeps a bounded ring of
its recent observations; the P99 is computed lazily with numpy and cached. A stage's P99
is recomputed once it has seen ``refresh_every`` new observations (sooner while its window
is still small), so observe() and linger() stay cheap when called once per batch: one P99
over 2048 samples is about 20 us, and a 2048-sample P99 moves little per sample anyway.
Pass ``refresh_every=1`` for an exact value after every observation.

With no observations at all, linger() returns half of ``max_linger_s`` (clamped to
``[min, max]``): nothing is known yet, so neither the most eager nor the most patient
choice; the first measured batch replaces it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LingerController"]


class _StageWindow:
    """Ring of a stage's recent durations with a cached nearest-rank P99."""

    __slots__ = ("_buf", "_computed_at", "_count", "_next", "_p99")

    def __init__(self, window: int) -> None:
        self._buf = np.empty(window, dtype=np.float64)
        self._count = 0  # observations ever seen
        self._next = 0
        self._computed_at = 0  # _count when _p99 was last computed
        self._p99 = 0.0

    def add(self, seconds: float) -> None:
        self._buf[self._next] = seconds
        self._next = (self._next + 1) % self._buf.shape[0]
        self._count += 1

    def stale(self, refresh_every: int) -> bool:
        new = self._count - self._computed_at
        filled = min(self._count, self._buf.shape[0])
        # While the window is small every sample moves the P99 a lot: refresh more often.
        return new > 0 and new >= min(refresh_every, max(1, filled // 64))

    def p99(self, refresh_every: int) -> float:
        if self.stale(refresh_every):
            n = min(self._count, self._buf.shape[0])
            k = (99 * n + 99) // 100 - 1  # nearest rank: ceil(0.99 n), 0-based
            self._p99 = float(np.partition(self._buf[:n], k)[k])
            self._computed_at = self._count
        return self._p99


class LingerController:
    """Turns measured stage latencies into the batcher's linger for a P99 target."""

    def __init__(
        self,
        p99_target_s: float,
        *,
        min_linger_s: float = 0.0,
        max_linger_s: float,
        window: int = 2048,
        safety: float = 0.8,
        refresh_every: int = 16,
    ) -> None:
        if not (math.isfinite(p99_target_s) and p99_target_s > 0):
            raise ValueError(f"p99_target_s must be a positive number, got {p99_target_s}")
        if not (math.isfinite(max_linger_s) and 0 <= min_linger_s <= max_linger_s):
            raise ValueError(
                f"need 0 <= min_linger_s <= max_linger_s, got {min_linger_s}, {max_linger_s}"
            )
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0 < safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {safety}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.p99_target_s = p99_target_s
        self.min_linger_s = min_linger_s
        self.max_linger_s = max_linger_s
        self.window = window
        self.safety = safety
        self.refresh_every = refresh_every
        self._stages: dict[str, _StageWindow] = {}
        self._cached: float | None = None  # linger() result until a stage goes stale

    def observe(self, stage: str, seconds: float) -> None:
        """Record one duration of a stage ("fetch", "queue", "model", "produce", ...)."""
        if not math.isfinite(seconds):
            raise ValueError(f"{stage}: duration must be finite, got {seconds}")
        ring = self._stages.get(stage)
        if ring is None:
            ring = self._stages[stage] = _StageWindow(self.window)
            self._cached = None
        # Stages timed against another host's clock (record timestamps) can come out
        # slightly negative; they cost nothing, not a negative amount.
        ring.add(seconds if seconds > 0.0 else 0.0)
        if self._cached is not None and ring.stale(self.refresh_every):
            self._cached = None

    def linger(self) -> float:
        """Seconds the batcher may wait for more rows now (see module docstring)."""
        if self._cached is None:
            if not self._stages:
                value = 0.5 * self.max_linger_s
            else:
                spent = sum(r.p99(self.refresh_every) for r in self._stages.values())
                value = self.safety * self.p99_target_s - spent
            self._cached = min(max(value, self.min_linger_s), self.max_linger_s)
        return self._cached

    def snapshot(self) -> dict[str, float]:
        """Per-stage P99 estimates (seconds) the current linger is based on."""
        return {name: r.p99(self.refresh_every) for name, r in self._stages.items()}
