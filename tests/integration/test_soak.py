"""Soak: a long, steady stream through both routes while the services' memory, file
descriptors and shared-memory segments are sampled.

The routes run as two services (`STREAMER_ROUTES=intent` and `=duplicate`), as deployed
(ARCHITECTURE.md "Deployment shape"): in one process a pair batch sits in front of intent
batches and the intent route's in-flight bound then caps it far below the offered rate here.
The intent service runs with a 1 s latency budget (STREAMER_P99_TARGET_MS=1000): its in-flight
bound is sized from the 10 ms budget (16 records), which on this loaded 2-core machine lets
only ~130 intents/s through (16 / ~0.1 s end to end); a soak is about memory over a long run,
not latency, and needs the rate.

CI runs a short version (STREAMER_SOAK_EVENTS, default 30,000); `make soak` runs 1,000,000.
RSS (service process + worker) is sampled every few seconds against the count of results out;
the slope of a least-squares line through the samples after warm-up (the first 20% of events)
is the figure: MB per 100k events. File descriptors and /dev/shm segments must be the same at
the end as after warm-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from streamer.kafka.probe import run_in_fresh_loop
from tests.integration.fault_harness import LoadGenerator, open_fds, process_tree, rss_mib
from tests.integration.pipeline_harness import ServiceProcess, create_topics
from tests.integration.test_faults import _results

EVENTS = int(os.environ.get("STREAMER_SOAK_EVENTS", "30000"))
RATE = float(os.environ.get("STREAMER_SOAK_RATE", "600"))
MAX_SLOPE = float(os.environ.get("STREAMER_SOAK_MAX_SLOPE_MB_PER_100K", "10"))
SAMPLE_S = 3.0

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.timeout(int(EVENTS / RATE * 3) + 900),
]


def slope_per_100k(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (events, MiB) points, in MB per 100,000 events."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    mib_per_event = sxy / sxx if sxx else 0.0
    return mib_per_event * 100_000 * (1 << 20) / 1e6


def test_slope_is_least_squares() -> None:
    assert slope_per_100k([(0, 10), (100_000, 11), (200_000, 12)]) == pytest.approx(1.048576)
    assert slope_per_100k([(0, 5), (50_000, 5)]) == 0


def shm_segments(pids: list[int]) -> set[str]:
    """These services' shared-memory segments (named streamer-<pid>-...)."""
    return {p.name for pid in pids for p in Path("/dev/shm").glob(f"streamer-{pid}-*")}


def test_soak(kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path) -> None:
    topics = run_in_fresh_loop(lambda: create_topics(kafka_bootstrap, 4), 60)
    services = [
        ServiceProcess(
            bootstrap=kafka_bootstrap, artifact=tiny_cpu_artifact, topics=topics,
            log_path=tmp_path / f"{route}.log", group_id=f"soak-{route}", routes=route,
            extra_env={"STREAMER_P99_TARGET_MS": "1000"} if route == "intent" else {},
        ).start()
        for route in ("intent", "duplicate")
    ]  # fmt: skip
    svc = services[0]
    pids = [s.proc.pid for s in services if s.proc is not None]
    samples: list[dict[str, float]] = []
    started = time.monotonic()

    def sample() -> None:
        out = sum(s.metric("streamer_results_out_total") for s in services)
        trees = [process_tree(pid) for pid in pids]
        tree = [p for t in trees for p in t]
        samples.append(
            {
                "t": time.monotonic() - started,
                "out": out,
                "rss": rss_mib(tree),
                "rss_service": rss_mib(pids),
                "fds": sum(open_fds(p) for p in tree if Path(f"/proc/{p}").exists()),
                "shm": len(shm_segments(pids)),
                "procs": len(tree),
            }
        )

    try:
        load = LoadGenerator(
            kafka_bootstrap, topics, RATE, EVENTS / RATE, prefix="k", deadline_s=EVENTS / RATE * 3 + 300
        ).start()  # fmt: skip
        warm_at = None
        while True:
            sample()
            if warm_at is None and samples[-1]["out"] >= 0.2 * EVENTS:
                warm_at = len(samples) - 1
                fds_warm, shm_warm = samples[-1]["fds"], shm_segments(pids)
            if samples[-1]["out"] >= EVENTS or time.monotonic() - started > EVENTS / RATE * 3 + 600:
                break
            for s in services:
                assert s.proc is not None and s.proc.poll() is None, s.log_tail()
            time.sleep(SAMPLE_S)
        load.join()
        figures = _results(svc, load, timeout_s=600)
        sample()
        shm_end = shm_segments(pids)
    finally:
        for s in services:
            s.stop()
    assert warm_at is not None, samples[-3:]
    steady = [(s["out"], s["rss"]) for s in samples[warm_at:]]
    slope = slope_per_100k(steady)
    slope_service = slope_per_100k([(s["out"], s["rss_service"]) for s in samples[warm_at:]])
    took = time.monotonic() - started
    first, last = samples[warm_at], samples[-1]
    print(
        f"soak: {figures}, {len(samples)} samples over {took:.0f} s "
        f"({figures['events'] / took:.0f} events/s), RSS after warm-up {first['rss']:.0f} -> "
        f"end {last['rss']:.0f} MiB, max {max(s['rss'] for s in samples):.0f} MiB; slope "
        f"{slope:+.2f} MB/100k events (service processes alone {slope_service:+.2f}); fds "
        f"{fds_warm:.0f} -> {last['fds']:.0f}; /dev/shm segments {len(shm_warm)} -> "
        f"{len(shm_end)}; processes {first['procs']:.0f} -> {last['procs']:.0f}"
    )
    assert figures["lost"] == 0, [s.log_tail() for s in services]
    assert slope < MAX_SLOPE, f"RSS grows {slope:.2f} MB per 100k events"
    assert last["fds"] <= fds_warm + 2, (fds_warm, last["fds"])
    assert shm_end == shm_warm
