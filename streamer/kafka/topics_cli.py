"""Create (idempotently) or describe the service's Kafka topics.

`streamer topics create [--partitions N]` creates whichever of the five topics are missing;
`streamer topics describe` prints partitions, replication and leaders. The broker address
and topic names come from `streamer.config` (so `KAFKA_BOOTSTRAP_SERVERS`, the
`STREAMER_TOPIC_*` variables and a `--config` TOML file apply) unless given as flags.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from streamer.kafka.topics import (
    DEFAULT_TOPICS,
    describe_topics,
    ensure_topics,
    topic_partitions,
)

FALLBACK_BOOTSTRAP = "127.0.0.1:9092"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer topics`."""
    parser.add_argument("action", choices=("create", "describe"))
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka address (default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="partitions for each topic created (existing topics are left alone; default 3)",
    )
    parser.add_argument("--replication", type=int, default=1, help="replication factor")
    parser.add_argument(
        "--topic",
        action="append",
        dest="topics",
        default=None,
        help="topic name (repeatable); default: the five configured topics",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per admin call")
    parser.add_argument("--config", default=None, help="TOML settings file (topic names)")


def configured_defaults(config_file: str | None = None) -> tuple[str, tuple[str, ...]]:
    """Bootstrap address and topic names from the settings module, if it can be loaded."""
    try:
        from streamer.config import load_settings

        settings = load_settings(config_file)
    except Exception:
        # A half-configured environment must not stop an operator from creating topics.
        return FALLBACK_BOOTSTRAP, DEFAULT_TOPICS
    names = (
        settings.topic_queries,
        settings.topic_pairs,
        settings.topic_intents,
        settings.topic_duplicates,
        settings.topic_dlq,
    )
    return settings.bootstrap_servers, names


def run(args: argparse.Namespace) -> int:
    """Run `topics create` or `topics describe`; exit code 1 on a broker error."""
    bootstrap, names = configured_defaults(args.config)
    bootstrap = args.bootstrap_servers or bootstrap
    names = tuple(args.topics) if args.topics else names
    try:
        if args.action == "create":
            report = asyncio.run(
                ensure_topics(
                    bootstrap,
                    topic_partitions(args.partitions, names),
                    replication=args.replication,
                    timeout_s=args.timeout,
                )
            )
            for name in report.created:
                print(f"created  {name} ({args.partitions} partitions)")
            for name in report.existing:
                print(f"exists   {name}")
            for name, (have, asked) in report.partition_mismatch.items():
                print(f"warning: {name} has {have} partitions, asked for {asked} (left as is)")
            return 0
        infos = asyncio.run(describe_topics(bootstrap, names, timeout_s=args.timeout))
        for name in names:
            info = infos.get(name)
            if info is None:
                print(f"{name}: missing")
                continue
            leaders = ",".join(str(info.leaders[p]) for p in sorted(info.leaders))
            print(
                f"{name}: partitions={info.partitions} replication={info.replication} "
                f"leaders=[{leaders}]"
            )
        return 0 if all(name in infos for name in names) else 1
    except Exception as exc:
        print(f"error: {bootstrap}: {exc!r}", file=sys.stderr)
        return 1
