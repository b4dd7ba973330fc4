"""Send real search queries or product pairs to a topic at a fixed open-loop rate.

It connects as `streamer run` does (`streamer.kafka.clients.client_kwargs`): the address and
the TLS/SASL settings from `STREAMER_*` (or `KAFKA_BOOTSTRAP_SERVERS`) and `--config`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from streamer.bench.events import EventFactory
from streamer.bench.loadgen import run_load, schedule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer produce`."""
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--kind", choices=["query", "pair"], default="query")
    parser.add_argument("--arrival", choices=["constant", "poisson"], default="constant")
    parser.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="share of malformed records (streamer.records.samples.BAD_RECORDS)",
    )
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka address (default: STREAMER_BOOTSTRAP_SERVERS or KAFKA_BOOTSTRAP_SERVERS, "
        "else 127.0.0.1:9092)",
    )
    parser.add_argument("--config", default=None, help="TOML settings file (address, security)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="shared data sets (default ../shared/data)")


def run(args: argparse.Namespace) -> int:
    """Produce, then print what was sent and how far the generator fell behind its schedule.
    Exit code 1 when a send failed or the broker cannot be reached, 2 on invalid settings."""
    from streamer.kafka.clients import client_kwargs, command_settings, connection_failure
    from streamer.records.samples import BAD_RECORDS

    settings = command_settings("streamer produce", args.config, bootstrap_servers=args.bootstrap)
    if settings is None:
        return 2
    factory = EventFactory(args.kind, args.data_dir, seed=args.seed)
    offsets = schedule(args.rate, args.duration, args.arrival, args.seed)
    bad = [raw for _, _, raw in BAD_RECORDS] if args.bad_fraction > 0 else None
    try:
        report = asyncio.run(
            run_load(
                settings.bootstrap_servers,
                args.topic,
                offsets,
                factory,
                offered_rate=args.rate,
                bad_records=bad,
                bad_fraction=args.bad_fraction,
                seed=args.seed,
                client_kwargs=client_kwargs(settings),
            )
        )
    except Exception as exc:
        why = asyncio.run(connection_failure(settings, exc))
        print(f"streamer produce: {why}", file=sys.stderr)
        return 1
    print(orjson.dumps(report.summary(), option=orjson.OPT_INDENT_2).decode())
    return 0 if report.failed == 0 else 1
