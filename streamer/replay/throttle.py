"""How fast a replay reads: a token bucket at `--rate`, scaled down while the live service suffers.

A backfill shares brokers, and often the machine or the accelerator, with the live service; the
live intent route's P99 is the one promise that must hold. The replay cannot see inside the
live process, so it reads what operators read: the live service's `/metrics`. Every second it
takes the P99 of the live end-to-end histogram over that second (bucket deltas) and the live
consumer lag; over budget, the replay halves its rate (down to 2% of it), otherwise it gives
back 10% per second (AIMD, as TCP does for a shared link). Without `--rate`, the base is the
replay's own recent throughput, so backing off still means something.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("streamer.replay")

MIN_FACTOR = 0.02
RECOVERY_STEP = 0.10


class Throttle:
    """Token bucket: at most `rate x factor` records per second (no limit without a rate, while
    the factor is 1)."""

    def __init__(self, rate: float | None, *, burst_s: float = 0.2) -> None:
        self.rate = rate
        self.factor = 1.0
        self.observed_rate = 0.0  # the replay's recent throughput (base when no --rate)
        self._burst_s = burst_s
        self._tokens = 0.0
        self._last = time.monotonic()

    def observe(self, rate: float) -> None:
        """The replay's throughput over the last second. Only a free-running second updates the
        base: measured while throttled, it would shrink the base with the factor and drive the
        replay down to the 1/s floor, from which +10% steps of nothing never recover."""
        if self.factor >= 1.0:
            self.observed_rate = 0.7 * self.observed_rate + 0.3 * rate

    def effective_rate(self) -> float | None:
        """Records per second allowed now; None = unlimited."""
        base = self.rate if self.rate else (self.observed_rate if self.factor < 1.0 else None)
        if base is None or base <= 0:
            return None
        return max(1.0, base * self.factor)

    async def take(self, want: int) -> int:
        """How many records the next fetch may take (waits until at least one may)."""
        while True:
            rate = self.effective_rate()
            if rate is None:
                return want
            now = time.monotonic()
            cap = max(1.0, rate * self._burst_s)
            self._tokens = min(cap, self._tokens + (now - self._last) * rate)
            self._last = now
            if self._tokens >= 1.0:
                return max(1, min(want, int(self._tokens)))
            await asyncio.sleep((1.0 - self._tokens) / rate)

    def spend(self, n: int) -> None:
        """Records actually taken."""
        self._tokens -= n


@dataclass
class LiveBudget:
    """When the live service counts as suffering: its intent P99 or its total lag over budget."""

    p99_s: float = 0.010
    max_lag: int = 1_000
    route: str = "intent"


@dataclass
class _Scrape:
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    lag: float = 0.0


def parse_live(text: str, route: str) -> _Scrape:
    """The live service's e2e histogram buckets for `route` and its total consumer lag."""
    out = _Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "streamer_end_to_end_seconds_bucket"
                and sample.labels.get("route", sample.labels.get("path")) == route
            ):
                out.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "streamer_consumer_lag":
                out.lag += sample.value
    return out


def window_p99(before: _Scrape, after: _Scrape) -> float | None:
    """P99 (upper bucket edge) of the observations between two scrapes; None if there were none."""
    edges = sorted(after.buckets)
    deltas = [after.buckets[e] - before.buckets.get(e, 0.0) for e in edges]
    total = deltas[-1] if deltas else 0.0
    if total <= 0:
        return None
    for edge, count in zip(edges, deltas, strict=True):
        if count >= 0.99 * total:
            return edge
    return math.inf


def adjust(factor: float, suffering: bool) -> float:
    """AIMD: halve while the live service suffers, else recover by a step."""
    if suffering:
        return max(MIN_FACTOR, factor * 0.5)
    return min(1.0, factor + RECOVERY_STEP)


class LivePriority:
    """Polls the live service's /metrics and sets the throttle's factor."""

    def __init__(self, url: str, throttle: Throttle, budget: LiveBudget) -> None:
        self.url = url
        self.throttle = throttle
        self.budget = budget
        self.backoffs = 0
        self._warned = False

    async def run(self, stopping: asyncio.Event, interval_s: float = 1.0) -> None:
        """Until stopping: scrape, judge the last interval, adjust the factor."""
        previous: _Scrape | None = None
        while not stopping.is_set():
            try:
                text = await asyncio.to_thread(self._get)
            except OSError as exc:
                if not self._warned:
                    log.warning(
                        "cannot read the live service's metrics; replay rate left as is",
                        extra={"event": "live_metrics_unreadable", "error": repr(exc)},
                    )
                    self._warned = True
                await asyncio.sleep(interval_s)
                continue
            current = parse_live(text, self.budget.route)
            if previous is not None:
                p99 = window_p99(previous, current)
                suffering = (p99 is not None and p99 > self.budget.p99_s) or (
                    current.lag > self.budget.max_lag
                )
                self.backoffs += int(suffering)
                self.throttle.factor = adjust(self.throttle.factor, suffering)
            previous = current
            await asyncio.sleep(interval_s)

    def _get(self) -> str:
        with urllib.request.urlopen(self.url, timeout=2) as response:
            return str(response.read().decode("utf-8", "replace"))
