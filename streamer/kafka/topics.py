"""Create and describe the service's topics, idempotently.

Brokers run with `auto.create.topics.enable=false`, so topics exist only because someone
created them on purpose with the partition count they meant. Names are parameters: the
five defaults below are what `streamer.config.Settings` uses unless told otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

QUERIES_TOPIC = "search.queries.v1"
PAIRS_TOPIC = "search.product-pairs.v1"
INTENTS_TOPIC = "search.query-intents.v1"
DUPLICATES_TOPIC = "search.product-duplicates.v1"
DLQ_TOPIC = "search.streamer.dlq.v1"
DEFAULT_TOPICS: tuple[str, ...] = (
    QUERIES_TOPIC,
    PAIRS_TOPIC,
    INTENTS_TOPIC,
    DUPLICATES_TOPIC,
    DLQ_TOPIC,
)

_TOPIC_ALREADY_EXISTS = 36


class TopicAdminError(RuntimeError):
    """The broker refused to create or describe a topic."""


@dataclass(frozen=True)
class TopicInfo:
    """One topic as the broker describes it."""

    name: str
    partitions: int
    replication: int
    leaders: dict[int, int] = field(default_factory=dict)
    """partition -> leader broker id (-1 while a partition has no leader)."""


@dataclass(frozen=True)
class EnsureReport:
    """What `ensure_topics` did: which topics it created and which already existed."""

    created: tuple[str, ...]
    existing: tuple[str, ...]
    partition_mismatch: dict[str, tuple[int, int]] = field(default_factory=dict)
    """existing topic -> (partitions it has, partitions asked for); never altered here."""


def topic_partitions(partitions: int, names: Iterable[str] = DEFAULT_TOPICS) -> dict[str, int]:
    """The same partition count for every named topic (what `streamer topics create` asks)."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return dict.fromkeys(names, partitions)


def _admin(
    bootstrap: str, timeout_s: float, client_kwargs: Mapping[str, Any] | None = None
) -> AIOKafkaAdminClient:
    """`client_kwargs`: security arguments, or a whole `streamer.kafka.clients.client_kwargs`
    (whose bootstrap address and client id then win)."""
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap, "client_id": "streamer-topics"}
    kwargs.update(client_kwargs or {})
    return AIOKafkaAdminClient(request_timeout_ms=max(1000, int(timeout_s * 1000)), **kwargs)


def _topic_info(raw: Mapping[str, Any]) -> TopicInfo:
    partitions = raw.get("partitions") or []
    replication = max((len(p.get("replicas") or []) for p in partitions), default=0)
    leaders = {int(p["partition"]): int(p["leader"]) for p in partitions}
    return TopicInfo(raw["topic"], len(partitions), replication, leaders)


async def describe_topics(
    bootstrap: str,
    names: Iterable[str] | None = None,
    timeout_s: float = 30.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, TopicInfo]:
    """Describe the named topics (all non-internal topics when `names` is None).

    Topics that do not exist are left out of the result rather than raising, so callers
    can diff "wanted" against "present".
    """
    wanted = list(names) if names is not None else None
    admin = _admin(bootstrap, timeout_s, client_kwargs)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        raw = await asyncio.wait_for(admin.describe_topics(wanted), timeout_s)
    finally:
        await admin.close()
    result: dict[str, TopicInfo] = {}
    for item in raw:
        if item.get("error_code") or item.get("is_internal"):
            continue
        info = _topic_info(item)
        result[info.name] = info
    return dict(sorted(result.items()))


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication: int = 1,
    timeout_s: float = 30.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> EnsureReport:
    """Create the topics that are missing; existing ones are fine and left as they are.

    Safe to run concurrently with another `ensure_topics`: a topic created by someone else
    between our check and our create counts as existing. Returns once every new topic has
    a leader on each partition, so producing right afterwards does not fail.
    """
    for name, partitions in topics.items():
        if partitions < 1:
            raise ValueError(f"{name}: partitions must be >= 1, got {partitions}")
    if not topics:
        return EnsureReport((), ())
    admin = _admin(bootstrap, timeout_s, client_kwargs)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        present = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        missing = [name for name in topics if name not in present]
        created: list[str] = []
        raced: list[str] = []
        if missing:
            response = await asyncio.wait_for(
                admin.create_topics(
                    [NewTopic(name, topics[name], replication) for name in missing],
                    timeout_ms=int(timeout_s * 1000),
                ),
                timeout_s,
            )
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code == _TOPIC_ALREADY_EXISTS:
                    raced.append(name)
                else:
                    message = rest[0] if rest and rest[0] else for_code(code).__name__
                    raise TopicAdminError(f"cannot create topic {name!r}: {message}")
        existing = [name for name in topics if name in present or name in raced]
        described = await _wait_for_leaders(admin, list(topics), timeout_s)
    finally:
        await admin.close()
    mismatch = {
        name: (described[name].partitions, topics[name])
        for name in existing
        if name in described and described[name].partitions != topics[name]
    }
    return EnsureReport(tuple(created), tuple(existing), mismatch)


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float
) -> dict[str, TopicInfo]:
    """Poll metadata until every partition of every topic has a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        raw = await asyncio.wait_for(admin.describe_topics(names), timeout_s)
        infos = {item["topic"]: _topic_info(item) for item in raw if not item.get("error_code")}
        ready = len(infos) == len(names) and all(
            info.partitions > 0 and all(leader >= 0 for leader in info.leaders.values())
            for info in infos.values()
        )
        if ready:
            return infos
        if loop.time() >= deadline:
            raise TopicAdminError(f"topics {sorted(names)} have no leader after {timeout_s:.0f}s")
        await asyncio.sleep(0.05)
