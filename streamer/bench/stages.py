"""Per-stage latency of the streamer contender, from its Prometheus endpoint, per step.

The service exports `streamer_stage_seconds{route,stage}` histograms; two scrapes around a step
give that step's count, mean and an upper-bound P99 per stage (bucket resolution). It also
splits each event's time into hand-off segments (`streamer.pipeline.attribution.SEGMENTS`,
which sum to the event's service-side end-to-end time) and keeps their sums for the slowest
events and for a uniform sample (`streamer_tail_*` counters): two scrapes give the step's mean
ms per segment of each set (`tail_deltas`), i.e. where the slowest events spent their time.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streamer.pipeline.attribution import SEGMENTS

STAGE_METRIC = "streamer_stage_seconds"
GC_METRIC = "streamer_gc_pause_seconds"  # by generation: does a collector pass reach the tail?

# (route, stage) -> {"count": n, "sum": seconds, "buckets": {le: cumulative count}}
Snapshot = dict[tuple[str, str], dict[str, object]]


def parse_stages(text: str, metric: str = STAGE_METRIC, stage_label: str = "stage") -> Snapshot:
    """Stage histograms out of a Prometheus text exposition (`stage_label`: the label that
    names the stage; `generation` for the service's garbage-collector passes, `GC_METRIC`)."""
    snap: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for s in family.samples:
            key = (s.labels.get("route", ""), s.labels.get(stage_label, ""))
            entry = snap.setdefault(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
            if s.name.endswith("_count"):
                entry["count"] = s.value
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
            elif s.name.endswith("_bucket"):
                entry["buckets"][float(s.labels["le"])] = s.value  # type: ignore[index]
    return snap


@dataclass(frozen=True)
class StageStats:
    """One stage over one step."""

    route: str
    stage: str
    count: int
    mean_ms: float
    p99_le_ms: float
    """Upper edge of the histogram bucket holding the 99th percentile (bucket resolution)."""


def stage_deltas(before: Snapshot, after: Snapshot) -> list[StageStats]:
    """What happened between two scrapes, per (route, stage)."""
    out = []
    for key, a in sorted(after.items()):
        b = before.get(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
        n = float(a["count"]) - float(b["count"])  # type: ignore[arg-type]
        if n <= 0:
            continue
        total = float(a["sum"]) - float(b["sum"])  # type: ignore[arg-type]
        p99 = math.inf
        b_buckets: dict[float, float] = b["buckets"]  # type: ignore[assignment]
        for le, cum in sorted(a["buckets"].items()):  # type: ignore[attr-defined]
            if cum - b_buckets.get(le, 0.0) >= 0.99 * n:
                p99 = le
                break
        out.append(StageStats(key[0], key[1], int(n), total / n * 1000.0, p99 * 1000.0))
    return out


def scrape(port: int, timeout_s: float = 2.0) -> Snapshot | None:
    """Scrape 127.0.0.1:port/metrics for the stage histograms; None when it is not there."""
    text = scrape_text(port, timeout_s)
    return None if text is None else parse_stages(text)


# --------------------------------------------------------------------------- tail attribution

TAIL_SEGMENT_METRIC = "streamer_tail_segment_seconds_total"
TAIL_EVENTS_METRIC = "streamer_tail_events_total"
TAIL_THRESHOLD_METRIC = "streamer_tail_threshold_seconds"
EVENT_SETS = ("slow", "sampled")
"""``slow``: above the service's running P99 when they finished; ``sampled``: 1 in N of all."""


@dataclass
class TailSnapshot:
    """The cumulative tail-attribution counters of one scrape."""

    seconds: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """(route, events set, segment) -> seconds summed over the set's events."""
    events: dict[tuple[str, str], float] = field(default_factory=dict)
    """(route, events set) -> events counted in the set."""
    threshold_s: dict[str, float] = field(default_factory=dict)
    """route -> the running P99 an event had to exceed to count as slow (a gauge)."""


def parse_tail(text: str) -> TailSnapshot:
    """The `streamer_tail_*` metrics out of a Prometheus text exposition.

    Matched by sample name: the parser names a counter's family without `_total` when the text
    declares its TYPE and with it when not, and a counter's `_created` sample is not wanted.
    """
    snap = TailSnapshot()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            route = s.labels.get("route", "")
            if s.name == TAIL_SEGMENT_METRIC:
                key = (route, s.labels.get("events", ""), s.labels.get("segment", ""))
                snap.seconds[key] = s.value
            elif s.name == TAIL_EVENTS_METRIC:
                snap.events[(route, s.labels.get("events", ""))] = s.value
            elif s.name == TAIL_THRESHOLD_METRIC:
                snap.threshold_s[route] = s.value
    return snap


@dataclass(frozen=True)
class TailStats:
    """One events set of one route over one step: how many, and their mean ms per segment."""

    route: str
    events: str
    count: int
    mean_ms: dict[str, float]
    """Segment -> mean ms per event of the set, in pipeline order (`SEGMENTS`), then any
    segment this bench does not know yet."""
    threshold_ms: float | None
    """The running P99 at the end of the step (None before the service had enough events)."""

    @property
    def total_ms(self) -> float:
        """Mean service-side end-to-end ms of the set (the segments sum to it)."""
        return sum(self.mean_ms.values())

    def as_dict(self) -> dict[str, Any]:
        """The step document's form (`step["tail"]`)."""
        return {
            "route": self.route,
            "events": self.events,
            "count": self.count,
            "threshold_ms": self.threshold_ms,
            "total_ms": self.total_ms,
            "mean_ms": dict(self.mean_ms),
        }


def segment_order(names: Iterable[str]) -> list[str]:
    """Pipeline order (`SEGMENTS`), then segments the service added since, sorted."""
    seen = set(names)
    return [s for s in SEGMENTS if s in seen] + sorted(seen - set(SEGMENTS))


def tail_deltas(before: TailSnapshot, after: TailSnapshot) -> list[TailStats]:
    """What happened between two scrapes, per (route, events set) with events in the step.

    Counters are cumulative: the step's share is their difference. A counter that went down
    (the service restarted between the scrapes) counts from zero, as Prometheus' rate() does.
    """
    out = []
    for (route, kind), a_n in sorted(after.events.items()):
        b_n = before.events.get((route, kind), 0.0)
        reset = a_n < b_n
        n = a_n if reset else a_n - b_n
        if n <= 0:
            continue
        segs = segment_order(seg for (r, k, seg) in after.seconds if (r, k) == (route, kind))
        mean_ms = {}
        for seg in segs:
            a_s = after.seconds[(route, kind, seg)]
            total = a_s if reset else a_s - before.seconds.get((route, kind, seg), 0.0)
            mean_ms[seg] = max(total, 0.0) / n * 1000.0
        # The gauge reads 0 (or NaN) until the service has seen enough events for a P99.
        threshold = after.threshold_s.get(route, math.nan)
        threshold_ms = threshold * 1000.0 if math.isfinite(threshold) and threshold > 0 else None
        out.append(TailStats(route, kind, round(n), mean_ms, threshold_ms))
    return out


def scrape_text(port: int, timeout_s: float = 2.0) -> str | None:
    """The text of 127.0.0.1:port/metrics; None when the endpoint is not there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            return str(r.read().decode("utf-8"))
    except OSError:
        return None


def ready(port: int, timeout_s: float = 1.0) -> bool:
    """True when the service's /readyz answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except OSError:
        return False
