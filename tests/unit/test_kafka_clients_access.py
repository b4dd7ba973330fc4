"""KafkaClients with an access probe: why a start fails, the ACL check, readiness while the
broker is away. Fakes only (the real probe is exercised in tests/integration/test_security.py
and test_faults.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError

from streamer.pipeline.service import KafkaClients, Service, StartupError

SECRET = "hunter2-very-secret"


class FakeClient:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.stopped = fail, False

    async def start(self) -> None:
        if self.fail:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")

    async def stop(self) -> None:
        self.stopped = True

    async def topics(self) -> set[str]:
        return {"in", "out", "dlq"}


class FakeAccess:
    def __init__(self, diagnosis: str | None = None, problems: list[str] | None = None) -> None:
        self.diagnosis, self.problems = diagnosis, problems or []
        self.reachable = [True]
        self.checked: tuple[set[str], set[str]] | None = None
        self.closed = False

    async def diagnose(self) -> str | None:
        return self.diagnosis

    async def check(self, read: set[str], write: set[str]) -> list[str]:
        self.checked = (set(read), set(write))
        return self.problems

    async def ping(self, timeout_s: float) -> bool:
        return self.reachable[0]

    async def close(self) -> None:
        self.closed = True


def _clients(access: FakeAccess, fail: bool = False) -> KafkaClients:
    return KafkaClients(
        FakeClient(fail), FakeClient(), "127.0.0.1:1", access=access,
        read_topics={"in"}, write_topics={"out", "dlq"}, secrets=[SECRET],
    )  # fmt: skip


def test_a_failed_connection_says_why_without_the_secret() -> None:
    clients = _clients(FakeAccess(diagnosis=f"SASL failed for password {SECRET}"), fail=True)
    with pytest.raises(StartupError) as err:
        asyncio.run(clients.start({"in", "out", "dlq"}))
    assert "SASL failed" in str(err.value) and SECRET not in str(err.value)
    assert clients.producer.stopped and clients.consumer.stopped


def test_missing_permissions_stop_startup_and_name_the_topic() -> None:
    access = FakeAccess(problems=["not authorized to WRITE topic dlq (missing ACL)"])
    clients = _clients(access)
    with pytest.raises(StartupError, match="WRITE topic dlq"):
        asyncio.run(clients.start({"in", "out", "dlq"}))
    assert access.checked == ({"in"}, {"out", "dlq"})
    assert access.closed


def test_readiness_follows_the_broker_ping() -> None:
    access = FakeAccess()
    clients = _clients(access)

    async def scenario() -> list[bool]:
        stopping = asyncio.Event()
        watch = asyncio.create_task(clients.watch(stopping, interval_s=0.01))
        seen = []
        for reachable in (True, False, True):
            access.reachable[0] = reachable
            await asyncio.sleep(0.05)
            seen.append(clients.broker_reachable)
        stopping.set()
        await watch
        return seen

    assert asyncio.run(scenario()) == [True, False, True]
    service = SimpleNamespace(
        _ready=True,
        flags=SimpleNamespace(stopping=asyncio.Event()),
        executor=SimpleNamespace(live_workers=lambda: 1),
        clients=clients,
        registry=None,
        intake=SimpleNamespace(stalled_over=lambda limit_s: []),
        _unreadable_ready_s=60.0,
    )
    assert Service.is_ready(service)  # type: ignore[arg-type]
    clients.broker_reachable = False
    assert not Service.is_ready(service)  # type: ignore[arg-type]
