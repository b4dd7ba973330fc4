"""The service's Kafka clients, configured from Settings (built by the composition root only)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streamer.config import Settings
from streamer.kafka.security import security_kwargs


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection and security arguments every aiokafka client of the service takes."""
    return _common(settings)


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        **security_kwargs(settings),
    }


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """acks=all (a result counts only once every in-sync replica has it); idempotent by default."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        linger_ms=settings.producer_linger_ms,
        request_timeout_ms=30_000,
        **_common(settings),
    )


def make_transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    """One input partition's producer for exactly-once delivery (streamer/pipeline/
    transactions.py): idempotent and acks=all by construction, its transactions time out on
    the broker after transaction_timeout_ms."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        linger_ms=settings.producer_linger_ms,
        request_timeout_ms=30_000,
        **_common(settings),
    )


def make_consumer(
    settings: Settings, *, group_id: str | None = "", offset_reset: str = "earliest"
) -> AIOKafkaConsumer:
    """Manual commits (the publisher commits acknowledged prefixes); a short fetch wait.

    read_committed: a transactional upstream's aborted records never reach the model.
    `group_id` overrides the settings' group (None: no group, partitions assigned by hand).
    `offset_reset`: where a partition without a usable offset starts. The live service takes the
    earliest record still there; the replay passes "none", so a position the broker no longer
    has (records deleted by retention) is an error it accounts for instead of a silent jump.
    """
    return AIOKafkaConsumer(
        group_id=settings.group_id if group_id == "" else group_id,
        group_instance_id=settings.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset=offset_reset,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_min_bytes=1,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        isolation_level="read_committed",
        **_common(settings),
    )


def make_admin(settings: Settings) -> AIOKafkaAdminClient:
    """Admin client for the group's committed offsets (the lag monitor)."""
    return AIOKafkaAdminClient(request_timeout_ms=10_000, **_common(settings))


def make_lag_probe(settings: Settings) -> AIOKafkaConsumer:
    """A consumer outside the group: log start/end offsets, and the one record at a committed
    offset whose timestamp gives the time lag. Small fetches: it reads one record per partition."""
    return AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=64 * 1024,
        isolation_level="read_committed",
        **_common(settings),
    )
