"""Pretty-print a results topic as records arrive, with each result's age."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time

import orjson


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer tail`."""
    parser.add_argument("--topic", required=True)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
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


async def tail(args: argparse.Namespace) -> int:
    """Consume without a group (nothing committed) and print each record."""
    from aiokafka import AIOKafkaConsumer
    from rich.console import Console
    from rich.markup import escape

    from streamer.kafka.security import env_security_kwargs

    console = Console()
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        enable_auto_commit=False,
        **env_security_kwargs(),
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        fetch_max_wait_ms=50,
        isolation_level=getattr(args, "isolation_level", "read_committed"),
    )
    await consumer.start()
    seen = 0
    try:
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
    """Run until Ctrl-C or --max records."""
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(tail(args))
    return 0
