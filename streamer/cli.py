"""Command-line entry point: `streamer <command>`; each command lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module exposing `add_arguments(parser)` and `run(args) -> int`.
# Imported lazily so `streamer --help` does not import torch.
COMMANDS: dict[str, str] = {
    "run": "streamer.app",
    "demo": "streamer.demo",
    "topics": "streamer.kafka.topics_cli",
    "produce": "streamer.bench.produce",
    "tail": "streamer.bench.tail",
    "bench": "streamer.bench.command",
    "bench-transport": "streamer.pipeline.bench_transport",
}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and dispatch to the command's module."""
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
