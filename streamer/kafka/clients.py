"""The service's Kafka clients, configured from Settings (built by the composition root only)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamer.config import Settings


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        **settings.kafka_security(),
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


def make_consumer(settings: Settings) -> AIOKafkaConsumer:
    """Manual commits (the publisher commits acknowledged prefixes); a short fetch wait.

    read_committed: a transactional upstream's aborted records never reach the model.
    """
    return AIOKafkaConsumer(
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_min_bytes=1,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        isolation_level="read_committed",
        **_common(settings),
    )
