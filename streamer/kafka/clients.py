"""The service's Kafka clients, configured from Settings (built by the composition root only).

`client_kwargs(settings)` is the one connection recipe (bootstrap, client id, TLS and SASL):
the service's clients and every command's (`streamer topics`, `produce`, `tail`, `replay`,
`bench` against an external cluster) are built from it, so a command reaches whatever cluster
`streamer run` reaches with the same `STREAMER_*` variables and `--config` file.
`command_settings` and `connection_failure` are the commands' side of it: settings errors and
unreachable brokers said in one line, as `streamer run` says them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError

from streamer.config import Settings, load_settings
from streamer.kafka.security import SecurityConfigError, redact, security_kwargs


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection and security arguments every aiokafka client of the service takes."""
    return _common(settings)


def command_settings(
    command: str, config_file: str | Path | None = None, **overrides: Any
) -> Settings | None:
    """The settings a command connects with: `streamer run`'s (flags > `STREAMER_*` > the
    `--config` TOML file > defaults). None, after one line per problem on stderr, when they
    are invalid: a command must not fall back to a plaintext connection when the security
    settings it was given cannot be used."""
    try:
        settings = load_settings(config_file, **overrides)
        security_kwargs(settings)  # unreadable TLS files fail here, not as "Unable to bootstrap"
    except ValidationError as exc:
        for err in exc.errors(include_input=False):
            where = ".".join(map(str, err["loc"])) or "settings"
            print(f"{command}: invalid setting {where}: {err['msg']}", file=sys.stderr)
        return None
    except (SecurityConfigError, FileNotFoundError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
    return settings


async def connection_failure(settings: Settings, exc: BaseException) -> str:
    """One line on why a command's Kafka call failed, without secrets. A failed connection
    gets `streamer run`'s start-up diagnosis (refused, TLS spoken to a plaintext client, the
    certificate or the SASL login rejected); any other error is named as it is."""
    from streamer.kafka.access import BrokerAccess

    where = settings.bootstrap_servers
    if isinstance(exc, KafkaConnectionError | TimeoutError | OSError):
        access = BrokerAccess(settings)
        try:
            reason = await access.diagnose()
        finally:
            await access.close()
        text = f"cannot connect to Kafka at {where}: " + (
            reason
            or f"{exc!r} (is the broker up, and are STREAMER_SECURITY_PROTOCOL and the "
            "STREAMER_SASL_*/STREAMER_SSL_* settings the cluster's?)"
        )
    elif isinstance(exc, KafkaError):
        text = f"Kafka at {where}: {type(exc).__name__}: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text, settings.secrets())


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        **security_kwargs(settings),
    }


def compression_type(settings: Settings) -> str | None:
    """aiokafka's `compression_type` for the configured codec ("none" is aiokafka's None).

    Results and dead letters share one producer, so they share the codec; the libraries behind
    snappy, lz4 and zstd (cramjam) are runtime dependencies, so every choice can be built.
    """
    return None if settings.producer_compression == "none" else settings.producer_compression


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """acks=all (a result counts only once every in-sync replica has it); idempotent by default;
    batches compressed with `producer_compression`."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        linger_ms=settings.producer_linger_ms,
        compression_type=compression_type(settings),
        request_timeout_ms=30_000,
        **_common(settings),
    )


def make_transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    """One input partition's producer for exactly-once delivery (streamer/pipeline/
    transactions.py): idempotent and acks=all by construction, its transactions time out on
    the broker after transaction_timeout_ms; compressed as the at-least-once producer is."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        linger_ms=settings.producer_linger_ms,
        compression_type=compression_type(settings),
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
