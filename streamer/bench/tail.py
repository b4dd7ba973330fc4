"""Pretty-print a results topic as records arrive, with each result's age.

It connects as `streamer run` does (`streamer.kafka.clients.client_kwargs`): the address and
the TLS/SASL settings from `STREAMER_*` (or `KAFKA_BOOTSTRAP_SERVERS`) and `--config`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

import orjson


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer tail`."""
    parser.add_argument("--topic", required=True)
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka address (default: STREAMER_BOOTSTRAP_SERVERS or KAFKA_BOOTSTRAP_SERVERS, "
        "else 127.0.0.1:9092)",
    )
    parser.add_argument("--config", default=None, help="TOML settings file (address, security)")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--max", type=int, default=0, help="stop after N records (0: never)")
    parser.add_argument(
        "--isolation-level",
        choices=("read_committed", "read_uncommitted"),
        default="read_committed",
        help="read_committed (default): only results of committed transactions, what a "
        "downstream of STREAMER_DELIVERY=exactly-once must read; read_uncommitted also shows "
        "records of open and aborted transactions (debugging)",
    )


def describe(value: bytes | None) -> str:
    """One readable line (rich markup) for a result, dead letter or any other JSON record."""
    from rich.markup import escape

    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return escape(repr((value or b"")[:200]))
    if not isinstance(doc, dict):
        return escape(orjson.dumps(doc).decode()[:200])
    if "intent" in doc:
        return f"[bold]{escape(str(doc['intent']))}[/] {doc.get('confidence', 0):.2f}"
    if "score" in doc:
        verdict = "DUPLICATE" if doc.get("is_duplicate") else "distinct"
        pair = escape(f"{doc.get('left_id')} ~ {doc.get('right_id')}")
        return f"[bold]{verdict}[/] {doc['score']:.3f} {pair}"
    if "error_code" in doc:
        return f"[red]{escape(str(doc['error_code']))}[/] {escape(str(doc.get('reason', '')))}"
    return escape(orjson.dumps(doc).decode()[:200])


async def tail(args: argparse.Namespace, client_kwargs: dict[str, Any]) -> int:
    """Consume without a group (nothing committed) and print each record."""
    from aiokafka import AIOKafkaConsumer
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    consumer = AIOKafkaConsumer(
        args.topic,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        fetch_max_wait_ms=50,
        isolation_level=getattr(args, "isolation_level", "read_committed"),
        **client_kwargs,
    )
    seen = 0
    try:
        await consumer.start()
        async for r in consumer:
            now = time.time() * 1000
            src = None
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                src = orjson.loads(r.value or b"{}").get("source_ts_ms")
            age = f"{now - src:8.1f} ms" if isinstance(src, int | float) else "       ? ms"
            key = escape((r.key or b"").decode("utf-8", "replace"))
            console.print(
                f"[dim]{r.partition}:{r.offset}[/] [cyan]{key}[/] {age}  {describe(r.value)}"
            )
            seen += 1
            if args.max and seen >= args.max:
                break
    finally:
        await consumer.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run until Ctrl-C or --max records; exit code 1 when the broker cannot be reached, 2 on
    invalid settings."""
    from streamer.kafka.clients import client_kwargs, command_settings, connection_failure

    settings = command_settings("streamer tail", args.config, bootstrap_servers=args.bootstrap)
    if settings is None:
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(tail(args, client_kwargs(settings)))
        except Exception as exc:
            why = asyncio.run(connection_failure(settings, exc))
            print(f"streamer tail: {why}", file=sys.stderr)
            return 1
    return 0
