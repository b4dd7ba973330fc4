"""Command-line surface shared by the Kafka contenders, so the harness starts them all alike."""

from __future__ import annotations

import argparse
import sys
from typing import Any

READY_LINE = "READY"


def parser(description: str) -> argparse.ArgumentParser:
    """Flags every Kafka contender takes: where to read, where to write, which model."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--in-topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--artifact", required=True)
    p.add_argument("--route", choices=["intent", "duplicate"], default="intent")
    p.add_argument("--force-artifact", action="store_true", help="load despite failed parity")
    p.add_argument("--threads", type=int, default=None, help="model threads (default: runner's)")
    p.add_argument("--max-batch", type=int, default=64, help="batching contenders only")
    p.add_argument("--linger-ms", type=float, default=5.0, help="batching contenders only")
    p.add_argument(
        "--emulate", choices=["h200", "inf2"], default=None,
        help="serve through the EMULATED accelerator instead of the model (host path only)",
    )  # fmt: skip
    return p


def kafka_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """aiokafka connection arguments: the service's own recipe (`client_kwargs` of its
    settings) at --bootstrap, so on a secured cluster a contender takes the `STREAMER_*` TLS
    and SASL settings of the environment the harness hands it, as the service contender does."""
    from streamer.config import load_settings
    from streamer.kafka.clients import client_kwargs

    return client_kwargs(load_settings(bootstrap_servers=a.bootstrap))


def announce_ready() -> None:
    """Tell the harness (reading our stdout) that partitions are assigned and the model is warm."""
    print(READY_LINE, flush=True)
    sys.stdout.flush()


def warmup_record(route: str) -> bytes:
    """A valid event of the route's kind, to warm the model before announcing readiness."""
    from streamer.bench.events import pair_event_bytes, query_event_bytes

    if route == "intent":
        return query_event_bytes("warmup", 0, "wireless noise cancelling headphones")
    from streamer.bench.data import Product, ProductPair

    left = Product("B0WARMUP01", "usb c cable 2m", "anker", "cables", "braided usb c cable", 9.99)
    right = Product("B0WARMUP02", "anker usb-c cable 6ft", "anker", "cables", "", 10.49)
    return pair_event_bytes("warmup", 0, ProductPair(left, right, 1))
