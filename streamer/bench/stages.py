"""Per-stage latency of the streamer contender, from its Prometheus endpoint, per step.

The service exports `streamer_stage_seconds{route,stage}` histograms; two scrapes around a step
give that step's count, mean and an upper-bound P99 per stage (bucket resolution).
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

STAGE_METRIC = "streamer_stage_seconds"

# (route, stage) -> {"count": n, "sum": seconds, "buckets": {le: cumulative count}}
Snapshot = dict[tuple[str, str], dict[str, object]]


def parse_stages(text: str, metric: str = STAGE_METRIC) -> Snapshot:
    """Stage histograms out of a Prometheus text exposition."""
    snap: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for s in family.samples:
            key = (s.labels.get("route", ""), s.labels.get("stage", ""))
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
    """Scrape 127.0.0.1:port/metrics; None when the endpoint is not there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            return parse_stages(r.read().decode("utf-8"))
    except OSError:
        return None


def ready(port: int, timeout_s: float = 1.0) -> bool:
    """True when the service's /readyz answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except OSError:
        return False
