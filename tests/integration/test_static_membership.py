"""Static group membership against the real broker: a restarted instance gets its partitions back
and the other instance is never rebalanced (STREAMER_GROUP_INSTANCE_ID, KIP-345).

The chart runs each route as a StatefulSet whose pod name is the instance id, so a rolling
restart brings back the same id. The control case runs the same restart without instance ids:
there the other instance is revoked and reassigned, which is what the static case must avoid
(and shows that the check below sees a rebalance when there is one).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import orjson
import pytest

from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    collect,
    create_topics,
    produce,
    query_event,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4
# Longer than a service restart on a busy 2-core machine (model load, worker spawn), so the
# restarted static member is back before the broker gives up on it.
SESSION_TIMEOUT_MS = 60_000


def rebalance_events(log_path: Path) -> list[tuple[str, frozenset[str]]]:
    """('assigned' | 'revoked', partitions) for every rebalance callback the service logged."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if record.get("event") in ("assigned", "revoked"):
            events.append((record["event"], frozenset(record.get("partitions", []))))
    return events


def current_assignment(log_path: Path) -> frozenset[str]:
    """What the instance holds now, replayed from its assigned/revoked log lines."""
    held: set[str] = set()
    for kind, partitions in rebalance_events(log_path):
        if kind == "assigned":
            held |= partitions
        else:
            held -= partitions
    return frozenset(held)


def wait_for(condition, timeout_s: float, what: str, *logs: ServiceProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    tails = "\n".join(f"--- {svc.log_path.name}\n{svc.log_tail()}" for svc in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic-control"])
def test_restarted_instance_rejoins_without_rebalancing_the_other(
    static: bool, kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    topics = asyncio.run(create_topics(kafka_bootstrap, partitions=PARTITIONS))
    group = f"static-{uuid.uuid4().hex[:8]}"
    every = frozenset(f"{topics.queries}[{p}]" for p in range(PARTITIONS))

    def service(name: str, log_name: str) -> ServiceProcess:
        env = {"STREAMER_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS)}
        if static:
            env["STREAMER_GROUP_INSTANCE_ID"] = f"{group}-{name}"
        return ServiceProcess(
            bootstrap=kafka_bootstrap, artifact=tiny_cpu_artifact, topics=topics,
            log_path=tmp_path / log_name, group_id=group, routes="intent", extra_env=env,
        )  # fmt: skip

    a = service("a", "a1.log").start()
    b = service("b", "b.log")
    a2: ServiceProcess | None = None
    try:
        b.start()

        def stable() -> bool:
            held_a, held_b = current_assignment(a.log_path), current_assignment(b.log_path)
            return bool(held_a) and bool(held_b) and held_a | held_b == every

        wait_for(stable, 90, "both instances to hold partitions", a, b)
        before_a = current_assignment(a.log_path)
        b_events_before = len(rebalance_events(b.log_path))

        # A rolling restart of instance a: SIGTERM (drain, commit, close), then the same id.
        a.signal(signal.SIGTERM)
        assert a.wait(timeout=60) == 0, a.log_tail()
        a2 = service("a", "a2.log").start()
        wait_for(lambda: bool(current_assignment(a2.log_path)), 90, "a to get partitions", a2, b)

        # Records on every partition are answered after the restart (both instances consume).
        events = [
            (f"s{i}".encode(), query_event(f"s{i}", QUERIES[i % len(QUERIES)])) for i in range(40)
        ]
        asyncio.run(produce(kafka_bootstrap, topics.queries, events))
        seen = asyncio.run(
            collect(kafka_bootstrap, topics.intents, {f"s{i}" for i in range(40)}, 90)
        )
        assert {f"s{i}" for i in range(40)} <= seen.keys()

        b_events_after = rebalance_events(b.log_path)[b_events_before:]
        if static:
            assert current_assignment(a2.log_path) == before_a, (before_a, a2.log_tail())
            assert b_events_after == [], f"b was rebalanced: {b_events_after}"
        else:
            # Dynamic members: a's LeaveGroup and its rejoin each rebalance b.
            assert any(kind == "revoked" for kind, _ in b_events_after), b.log_tail()
    finally:
        for svc in (a2, b, a):
            if svc is not None:
                svc.stop()
