"""Create (idempotently) or describe the service's Kafka topics.

`streamer topics create [--partitions N]` creates whichever of the five topics are missing;
`streamer topics describe` prints partitions, replication and leaders. It connects as
`streamer run` does (`streamer.kafka.clients.client_kwargs`): the broker address, the topic
names and the TLS/SASL settings come from `STREAMER_*` (and `KAFKA_BOOTSTRAP_SERVERS`) and a
`--config` TOML file, the address also from `--bootstrap-servers`. Settings that do not
validate stop it (exit 2) rather than letting it try a plaintext connection.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from streamer.kafka.topics import describe_topics, ensure_topics, topic_partitions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer topics`."""
    parser.add_argument("action", choices=("create", "describe"))
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka address (default: STREAMER_BOOTSTRAP_SERVERS or KAFKA_BOOTSTRAP_SERVERS, "
        "else 127.0.0.1:9092)",
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
    parser.add_argument("--config", default=None, help="TOML settings file (topic names, security)")


def run(args: argparse.Namespace) -> int:
    """Run `topics create` or `topics describe`; exit code 1 on a broker error, 2 on settings."""
    from streamer.kafka.clients import client_kwargs, command_settings, connection_failure

    settings = command_settings(
        "streamer topics", args.config, bootstrap_servers=args.bootstrap_servers
    )
    if settings is None:
        return 2
    kafka = client_kwargs(settings)
    bootstrap = settings.bootstrap_servers
    names = tuple(args.topics) if args.topics else (
        settings.topic_queries, settings.topic_pairs, settings.topic_intents,
        settings.topic_duplicates, settings.topic_dlq,
    )  # fmt: skip
    try:
        if args.action == "create":
            report = asyncio.run(
                ensure_topics(
                    bootstrap,
                    topic_partitions(args.partitions, names),
                    replication=args.replication,
                    timeout_s=args.timeout,
                    client_kwargs=kafka,
                )
            )
            for name in report.created:
                print(f"created  {name} ({args.partitions} partitions)")
            for name in report.existing:
                print(f"exists   {name}")
            for name, (have, asked) in report.partition_mismatch.items():
                print(f"warning: {name} has {have} partitions, asked for {asked} (left as is)")
            return 0
        infos = asyncio.run(
            describe_topics(bootstrap, names, timeout_s=args.timeout, client_kwargs=kafka)
        )
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
        print(f"streamer topics: {asyncio.run(connection_failure(settings, exc))}", file=sys.stderr)
        return 1
