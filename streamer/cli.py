"""Command-line entry point: `streamer <command>`; each command lives in its own module.

Only the chosen command's module is imported: `streamer run` must not pay for the benchmark
harness, the training code or their dependencies at every start.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module exposing `add_arguments(parser)` and `run(args) -> int`, help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("streamer.app", "serve query intents and product-duplicate scores, Kafka to Kafka"),
    "demo": ("streamer.demo", "the whole job on this machine for ~30 s, with a summary"),
    "replay": (
        "streamer.replay.command",
        "re-score a time or offset range of the input topics (backfills), resumable",
    ),
    "topics": ("streamer.kafka.topics_cli", "create or describe the service's topics"),
    "produce": ("streamer.bench.produce", "offer real events at a fixed rate (open loop)"),
    "tail": ("streamer.bench.tail", "print a result topic's records as they arrive"),
    "bench": ("streamer.bench.command", "side-by-side benchmark of the service and baselines"),
    "bench-transport": (
        "streamer.bench.micro.transport",
        "micro-benchmark: executor transport cost per batch",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and dispatch to the command's module (imported only when chosen)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Query intents and product-duplicate scores from a BERT model, Kafka to Kafka.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
    args = parser.parse_args(argv)
    assert module is not None  # argparse exits on an unknown or missing command
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
