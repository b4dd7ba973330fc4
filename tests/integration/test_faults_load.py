"""Faults that need no broker control, on the session broker: a rebalance storm (3 instances in
one group, one killed or added every few seconds for a minute under load) and a slow downstream
(a broker-side producer quota on the service's client id). Figures are printed for
RELIABILITY.md; deadlines are generous and nothing is asserted about speed.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from streamer.kafka.probe import run_in_fresh_loop
from tests.integration.fault_harness import LoadGenerator, kafka_tool, process_tree, rss_mib
from tests.integration.pipeline_harness import ServiceProcess, create_topics
from tests.integration.test_faults import _results

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(900)]

STORM_RATE = float(os.environ.get("STREAMER_STORM_RATE", "500"))
STORM_S = float(os.environ.get("STREAMER_STORM_S", "60"))


def test_rebalance_storm(kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path) -> None:
    """Every ~5 s for a minute one of the group's instances is SIGKILLed or a new one joins
    (never fewer than one, at most three alive); nothing is lost, duplicates are reported."""
    topics = run_in_fresh_loop(lambda: create_topics(kafka_bootstrap, 6), 60)
    group = f"storm-{uuid.uuid4().hex[:6]}"
    services: list[ServiceProcess] = []

    def new(wait: bool) -> ServiceProcess:
        svc = ServiceProcess(
            bootstrap=kafka_bootstrap, artifact=tiny_cpu_artifact, topics=topics,
            log_path=tmp_path / f"svc{len(services)}.log", group_id=group,
        )  # fmt: skip
        services.append(svc)
        return svc.start() if wait else svc.launch()

    rng = random.Random(14)
    actions: list[str] = []
    started = time.monotonic()
    try:
        for _ in range(3):
            new(wait=True)
        load = LoadGenerator(kafka_bootstrap, topics, STORM_RATE, STORM_S, prefix="s").start()
        end = time.monotonic() + STORM_S
        while time.monotonic() < end:
            time.sleep(5)
            alive = [s for s in services if s.proc is not None and s.proc.poll() is None]
            if len(alive) >= 3 or (len(alive) > 1 and rng.random() < 0.5):
                victim = rng.choice(alive)
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(30)
                actions.append("kill")
            else:
                new(wait=False)
                actions.append("add")
        if not [s for s in services if s.proc is not None and s.proc.poll() is None]:
            new(wait=True)
        load.join()
        figures = _results(services[-1], load, timeout_s=500)
    finally:
        for svc in services:
            svc.stop()
    took = time.monotonic() - started
    print(
        f"rebalance storm: {figures}, actions {actions} ({actions.count('kill')} kills, "
        f"{actions.count('add')} adds, {len(services)} instances in all), total {took:.0f} s"
    )
    assert actions.count("kill") >= 3 and actions.count("add") >= 1, actions
    assert figures["lost"] == 0, services[-1].log_tail()


def test_slow_downstream_quota_pauses_input(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    """A broker-side producer_byte_rate quota on the service's client id throttles its result
    writes: the input partitions pause, in-flight stays within the bound, memory stays
    bounded, and once the quota is lifted every event is answered."""
    from streamer.pipeline.backpressure import Backpressure

    topics = run_in_fresh_loop(lambda: create_topics(kafka_bootstrap, 2), 60)
    client_id = f"quota-{uuid.uuid4().hex[:6]}"
    entity = ["--entity-type", "clients", "--entity-name", client_id]
    config = ["kafka.admin.ConfigCommand", ["--bootstrap-server", kafka_bootstrap, "--alter"]]
    kafka_tool(config[0], [*config[1], "--add-config", "producer_byte_rate=16384", *entity])
    svc = ServiceProcess(
        bootstrap=kafka_bootstrap, artifact=tiny_cpu_artifact, topics=topics,
        log_path=tmp_path / "svc.log", group_id=f"quota-{client_id}",
        extra_env={"STREAMER_CLIENT_ID": client_id},
    ).start()  # fmt: skip
    bound = Backpressure.for_budget(400, 0.010 * 0.5, floor=2 * 4 * 2).high
    paused_max = inflight_max = 0.0
    rss: list[float] = []

    def sample() -> None:
        nonlocal paused_max, inflight_max
        assert svc.proc is not None
        rss.append(rss_mib(process_tree(svc.proc.pid)))
        for line in svc.http("/metrics")[1].splitlines():
            if line.startswith('streamer_paused_partitions{route="intent"'):
                paused_max = max(paused_max, float(line.rsplit(" ", 1)[1]))
            if line.startswith('streamer_inflight_records{route="intent"'):
                inflight_max = max(inflight_max, float(line.rsplit(" ", 1)[1]))

    started = time.monotonic()
    try:
        sample()
        baseline = rss[0]
        # 2,000 events/s for 5 s: far above what 16 KiB/s of results (~45/s) lets out.
        load = LoadGenerator(kafka_bootstrap, topics, 2000, 5, pair_share=0, prefix="d").start()
        throttled_until = time.monotonic() + 25
        while time.monotonic() < throttled_until:
            sample()
            time.sleep(0.3)
        out_while_throttled = svc.metric("streamer_results_out_total")
        kafka_tool(config[0], [*config[1], "--delete-config", "producer_byte_rate", *entity])
        load.join()
        figures = _results(svc, load)
        sample()
        assert svc.proc is not None and svc.proc.poll() is None, svc.log_tail()
    finally:
        svc.stop()
    took = time.monotonic() - started
    print(
        f"slow downstream (16 KiB/s quota for 25 s): {figures}, paused partitions max "
        f"{paused_max:.0f}, in-flight max {inflight_max:.0f} (bound {bound}), results while "
        f"throttled {out_while_throttled:.0f}, RSS {baseline:.0f} "
        f"-> max {max(rss):.0f} MiB, total {took:.0f} s"
    )
    # The quota did throttle: without it the tiny model answers all 10,000 within the window.
    assert out_while_throttled < figures["events"] / 2, out_while_throttled
    assert paused_max > 0, "the quota never paused the input"
    assert inflight_max <= bound
    assert max(rss) - baseline < 100
    assert figures["lost"] == 0, svc.log_tail()
