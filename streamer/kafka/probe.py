"""Is a Kafka broker really serving? Ask it with a real client, not a port check.

A listening socket is not a working broker: KRaft opens its listeners before the broker is
registered and unfenced, and the group coordinator (`__consumer_offsets`) only exists after
the first FindCoordinator. The probe does both through aiokafka, so "ready" means a consumer
group can join immediately afterwards.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient

T = TypeVar("T")

PROBE_GROUP = "streamer-readiness-probe"


class ProbeError(RuntimeError):
    """The broker did not answer as a working Kafka broker in time."""


@dataclass(frozen=True)
class ClusterProbe:
    """What the probe learned from the broker."""

    bootstrap_servers: str
    cluster_id: str | None
    broker_count: int
    controller_id: int | None


def split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """Parse 'host:port,host:port' into pairs; a bare host means port 9092."""
    pairs = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "9092"
        pairs.append((host.strip("[]"), int(port)))
    if not pairs:
        raise ValueError(f"no broker address in {bootstrap!r}")
    return pairs


def tcp_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port (cheap pre-check)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def probe_once(
    bootstrap: str, timeout_s: float = 5.0, client_kwargs: Mapping[str, Any] | None = None
) -> ClusterProbe:
    """One metadata round trip plus a FindCoordinator; raises if either fails.

    `client_kwargs`: security settings (TLS, SASL) for a secured broker.
    """
    timeout_ms = max(1000, int(timeout_s * 1000))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamer-probe",
        request_timeout_ms=timeout_ms,
        **(client_kwargs or {}),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        brokers = cluster.get("brokers") or []
        if not brokers:
            raise ProbeError(f"{bootstrap} answered metadata but lists no broker yet")
        # Creates __consumer_offsets on first use; until it exists, groups cannot join.
        await asyncio.wait_for(admin.find_coordinator(PROBE_GROUP), timeout_s)
        # After a restart the coordinator reloads committed offsets; meanwhile OffsetFetch
        # answers COORDINATOR_LOAD_IN_PROGRESS, which aiokafka's list_consumer_group_offsets
        # turns into an empty dict. ListGroups raises instead, so it is the load check.
        await asyncio.wait_for(admin.list_consumer_groups(), timeout_s)
        controller = cluster.get("controller_id")
        return ClusterProbe(
            bootstrap_servers=bootstrap,
            cluster_id=cluster.get("cluster_id"),
            broker_count=len(brokers),
            controller_id=controller if isinstance(controller, int) and controller >= 0 else None,
        )
    finally:
        await admin.close()


def run_in_fresh_loop(factory: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """Run a coroutine on its own loop in a helper thread.

    The broker lifecycle is synchronous and is also called from inside running event loops
    (async tests restart the broker); `asyncio.run` would refuse there, a thread does not.
    """
    box: dict[str, object] = {}

    async def _main() -> T:
        return await factory()

    def target() -> None:
        try:
            box["value"] = asyncio.run(_main())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="kafka-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ProbeError(f"probe did not finish within {timeout_s:.0f}s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def wait_until_ready(
    bootstrap: str,
    timeout_s: float,
    still_starting: Callable[[], bool] = lambda: True,
    poll_s: float = 0.1,
    client_kwargs: Callable[[], Mapping[str, Any]] | None = None,
) -> ClusterProbe:
    """Poll until the broker serves metadata and group coordination, or raise ProbeError.

    `still_starting` lets the caller abort early (the broker process died): waiting out the
    whole timeout for a process that is gone only hides the reason.
    """
    deadline = time.monotonic() + timeout_s
    host, port = split_bootstrap(bootstrap)[0]
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if not still_starting():
            raise ProbeError("broker process exited while starting")
        # A refused connect is cheap; a client against a closed port logs noisy errors.
        if tcp_accepts(host, port):
            attempt_s = min(5.0, max(1.0, deadline - time.monotonic()))
            try:
                # A factory: an SSLContext must not be shared across the helper loops.
                kwargs = client_kwargs() if client_kwargs else None
                return run_in_fresh_loop(
                    functools.partial(probe_once, bootstrap, attempt_s, kwargs), attempt_s * 4
                )
            except Exception as exc:
                last_error = exc
        time.sleep(poll_s)
    raise ProbeError(f"{bootstrap} not ready after {timeout_s:.0f}s (last error: {last_error!r})")
