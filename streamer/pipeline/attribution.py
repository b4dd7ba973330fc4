"""Where the slowest events spent their time: per-event hand-off times, kept for the tail.

Per-stage means and per-stage P99s do not explain an end-to-end P99: the slowest events are
slow in one place, not a little everywhere, and which place changes with the load. So every
event's time is split at its hand-offs into `SEGMENTS`, which sum to its service-side end-to-end
time (the producer's timestamp to the broker's acknowledgement of its result):

    to_broker    producer's timestamp -> appended by the broker (known where the source topic
                 keeps the broker's clock, message.timestamp.type=LogAppendTime, as the bench's
                 do; elsewhere 0, and the time counts in fetch)
    fetch        -> returned by the consumer's fetch (broker, fetch request, the client's wait)
    decode       fetched -> row in the batcher (decode + tokenize of its fetched chunk)
    linger       -> its batch closed (waiting for more rows)
    queue        batch closed -> the batch's task runs on the event loop
    worker_wait  -> the model run starts (executor queue, shared-memory hand-off, wake-up)
    run          the model run itself (the worker's clock)
    return       run ended -> scores back in the service's batch task
    produce      -> every result of the batch acknowledged by the broker (acks=all)

Kept for two sets of events, as Prometheus counters (`streamer_tail_*`): ``slow``, the events
whose end-to-end time was above the running P99 of the recent events (the last `WINDOW`, none
older than `HORIZON_S`) when they finished
(the slowest ~1%), and ``sampled``, a uniform 1-in-`SAMPLE_EVERY` sample, the baseline they are
compared with. The bench differences two scrapes per step ("where the slowest 1% spent their
time"). Most stamps are per fetched chunk or per batch, so the cost per event is a few float
operations (`streamer/bench/micro/attribution.py` measures it): it is always on.

Exactly-once delivery is not attributed: its results become visible at the transaction commit,
on the commit interval, which is the whole story of its tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SEGMENTS = (
    "to_broker", "fetch", "decode", "linger", "queue", "worker_wait", "run", "return", "produce"
)  # fmt: skip
SAMPLE_EVERY = 16
WINDOW = 1024  # at most this many recent events behind the running P99 ...
HORIZON_S = 5.0  # ... and none older than this, so a cold start or a past burst ages out
REFRESH_EVERY = 64  # events between two recomputations of the running P99
MIN_FOR_P99 = 100  # no event counts as slow before this many were seen


@dataclass(slots=True)
class BatchClock:
    """One batch's hand-off times (time.monotonic() seconds), filled as the batch moves.

    `run_start` / `run_end` are stamped by the executor (the worker's CLOCK_MONOTONIC, the same
    clock system-wide on Linux); None when the executor did not report them (the whole call then
    counts as `run`).
    """

    closed: float
    started: float
    run_start: float | None = None
    run_end: float | None = None
    back: float = math.nan


class TailAttribution:
    """Splits each finished event's time into `SEGMENTS` and keeps the slow and sampled sets."""

    def __init__(
        self,
        segment_seconds: Any,
        events_total: Any,
        threshold: Any,
        route: str,
        *,
        sample_every: int = SAMPLE_EVERY,
        window: int = WINDOW,
        horizon_s: float = HORIZON_S,
        refresh_every: int = REFRESH_EVERY,
    ) -> None:
        """`segment_seconds`, `events_total`, `threshold`: the Prometheus metrics (counter with
        route/events/segment labels, counter with route/events, gauge with route)."""
        self._sums = {
            kind: [segment_seconds.labels(route, kind, s) for s in SEGMENTS]
            for kind in ("slow", "sampled")
        }
        self._counts = {kind: events_total.labels(route, kind) for kind in ("slow", "sampled")}
        self._threshold_gauge = threshold.labels(route)
        self._sample_every = sample_every
        self._refresh_every = refresh_every
        self._recent = np.zeros(window, dtype=np.float64)
        self._finished = np.full(window, -math.inf)  # when each recent event was acknowledged
        self._horizon_s = horizon_s
        self._seen = 0
        self.threshold_s = math.inf

    def batch_done(self, rows: Sequence[Any], clock: BatchClock, acked: float) -> None:
        """Every row of a batch was acknowledged at `acked` (time.monotonic())."""
        queue = clock.started - clock.closed
        if clock.run_start is None or clock.run_end is None:
            worker_wait, run, back = 0.0, clock.back - clock.started, 0.0
        else:
            worker_wait = clock.run_start - clock.started
            run = clock.run_end - clock.run_start
            back = clock.back - clock.run_end
        produce = acked - clock.back
        shared = queue + worker_wait + run + back + produce
        recent, finished, size = self._recent, self._finished, len(self._recent)
        for row in rows:
            linger = clock.closed - row.ready_at
            e2e = row.broker_s + row.fetch_s + row.decode_s + linger + shared
            recent[self._seen % size] = e2e
            finished[self._seen % size] = acked
            self._seen += 1
            if self._seen % self._refresh_every == 0:
                self._refresh(acked)
            slow = e2e > self.threshold_s
            sampled = self._seen % self._sample_every == 0
            if slow or sampled:
                parts = (
                    row.broker_s, row.fetch_s, row.decode_s, linger, queue, worker_wait, run,
                    back, produce,
                )  # fmt: skip
                if slow:
                    self._add("slow", parts)
                if sampled:
                    self._add("sampled", parts)

    def _refresh(self, now: float) -> None:
        """The P99 of the events of the last `horizon_s` (at most `window` of them)."""
        live = self._recent[self._finished >= now - self._horizon_s]
        if len(live) >= MIN_FOR_P99:
            self.threshold_s = float(np.percentile(live, 99))
            self._threshold_gauge.set(self.threshold_s)

    def _add(self, kind: str, parts: tuple[float, ...]) -> None:
        self._counts[kind].inc()
        for counter, seconds in zip(self._sums[kind], parts, strict=True):
            counter.inc(max(0.0, seconds))
