"""Helpers for the fault tests: an open-loop load generator on its own thread, process memory
and descriptor readings, the broker's own tools.

The load generator runs on its own thread and event loop so the test's main thread stays free
to stop, pause and restart the broker (LocalKafka ties the broker's life to the thread that
started it) and to poll the service's /readyz. It offers events at a fixed rate, keeps every id
it generated, and re-sends any whose send failed or was never acknowledged (the broker being
away), so at the end every id was acknowledged at least once: "lost" then means an id with no
result, never an id the test failed to deliver.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from tests.integration.pipeline_harness import QUERIES, Topics, pair_event, query_event


@dataclass
class LoadGenerator:
    """Offer `rate` events/s for `duration_s` (a `pair_share` of them pairs), ids `<prefix>q<i>`
    and `<prefix>p<i>`; `join()` waits until every one is acknowledged (or `deadline_s`)."""

    bootstrap: str
    topics: Topics
    rate: float
    duration_s: float
    pair_share: float = 0.2
    prefix: str = ""
    deadline_s: float = 300.0
    client_kwargs: dict[str, Any] | None = None
    acked: dict[str, set[str]] = field(default_factory=lambda: {"q": set(), "p": set()})
    generated: dict[str, list[str]] = field(default_factory=lambda: {"q": [], "p": []})
    resends: int = 0
    offered_s: float = 0.0
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _retry: deque[tuple[str, str]] = field(default_factory=deque)
    _outstanding: int = 0

    def start(self) -> LoadGenerator:
        """Begin offering load (returns at once)."""
        self._thread = threading.Thread(target=self._main, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def join(self) -> None:
        """Wait for the generator to finish; re-raise its error."""
        assert self._thread is not None
        self._thread.join(self.deadline_s + 60)
        if self._thread.is_alive():
            raise TimeoutError("load generator did not finish")
        if self.error is not None:
            raise self.error

    @property
    def total(self) -> int:
        """Events generated so far."""
        return len(self.generated["q"]) + len(self.generated["p"])

    def missing_acks(self) -> int:
        """Generated ids never acknowledged by the broker."""
        return sum(len(set(self.generated[k]) - self.acked[k]) for k in ("q", "p"))

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    def _value(self, kind: str, eid: str, i: int) -> tuple[str, bytes]:
        if kind == "q":
            return self.topics.queries, query_event(eid, QUERIES[i % len(QUERIES)] + f" {i}")
        return self.topics.pairs, pair_event(eid, i)

    async def _send(self, producer: AIOKafkaProducer, kind: str, eid: str, i: int) -> None:
        topic, value = self._value(kind, eid, i)
        try:
            future = await asyncio.wait_for(producer.send(topic, value, key=eid.encode()), 15)
        except Exception:
            self._retry.append((kind, eid))
            return
        self._outstanding += 1

        def done(fut: asyncio.Future[Any]) -> None:
            self._outstanding -= 1
            if fut.cancelled() or fut.exception() is not None:
                self._retry.append((kind, eid))
            else:
                self.acked[kind].add(eid)

        future.add_done_callback(done)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
            request_timeout_ms=10_000, **(self.client_kwargs or {}),
        )  # fmt: skip
        await producer.start()
        try:
            start = loop.time()
            n = int(self.rate * self.duration_s)
            every = round(1 / self.pair_share) if self.pair_share else 0
            for i in range(n):
                delay = start + i / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                kind = "p" if every and i % every == every - 1 else "q"
                eid = f"{self.prefix}{kind}{i}"
                self.generated[kind].append(eid)
                await self._send(producer, kind, eid, i)
            self.offered_s = loop.time() - start
            deadline = start + self.deadline_s
            while loop.time() < deadline and (self._retry or self._outstanding):
                while self._retry:
                    kind, eid = self._retry.popleft()
                    self.resends += 1
                    await self._send(producer, kind, eid, int(eid[len(self.prefix) + 1 :]))
                await asyncio.sleep(0.2)
        finally:
            await producer.stop()


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the service and its worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pids: list[int]) -> float:
    """Summed resident set size of the processes, MiB (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def open_fds(pid: int) -> int:
    """Open file descriptors of one process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def kafka_tool(main_class: str, args: list[str], timeout_s: float = 120) -> str:
    """Run one of Kafka's command-line tools (the broker's own jars), e.g. kafka-configs."""
    from streamer.kafka.install import install
    from streamer.kafka.local_broker import (
        DEPLOY_DIR,
        FAST_START_JVM_FLAGS,
        find_java,
        java_command,
    )

    cmd = java_command(
        find_java(), install().classpath, main_class, args, heap="256m",
        log4j_config=DEPLOY_DIR / "log4j2.properties", jvm_flags=FAST_START_JVM_FLAGS,
    )  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{main_class} {args} failed: {(out.stdout + out.stderr)[-2000:]}")
    return out.stdout


def wait_for(predicate: Any, timeout_s: float, poll_s: float = 0.25) -> float | None:
    """Seconds until predicate() was true, or None after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(poll_s)
    return None
