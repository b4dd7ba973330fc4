"""Benchmark the service against naive, peer and model-only contenders (knee search, report)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

from streamer.bench.data import REPO_ROOT
from streamer.bench.harness import (
    ALL_CONTENDERS,
    CODECS,
    BenchConfig,
    compression_variants,
    external_bootstrap,
    kill_live_contenders,
    parse_variant,
    run_bench,
)
from streamer.bench.report import markdown, plots


def default_artifact(given: Path | None = None) -> Path | None:
    """The given artifact (compiled for cpu if it is a trained one), else the shipped model
    compiled for cpu; None (after saying why) if neither can be had."""
    from streamer.app import resolve_artifact
    from streamer.pipeline.service import StartupError

    try:
        return resolve_artifact(given)
    except StartupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer bench`."""
    parser.add_argument("--quick", action="store_true", help="short steps; under 10 minutes")
    parser.add_argument(
        "--emulate",
        choices=["h200", "inf2"],
        help="every contender serves through this EMULATED accelerator (the host path alone)",
    )
    parser.add_argument(
        "--profile",
        choices=["quick", "full", "emulated", "gpu"],
        help="preset (--quick = quick; emulated = the host path on an EMULATED H200)",
    )
    parser.add_argument(
        "--artifact", type=Path, help="model to serve (default: the shipped one, compiled for cpu)"
    )
    parser.add_argument(
        "--contenders",
        default=",".join(ALL_CONTENDERS),
        help=f"comma list of {', '.join(ALL_CONTENDERS)}",
    )
    parser.add_argument("--routes", help="intent,duplicate (default; the gpu profile: intent)")
    parser.add_argument(
        "--bootstrap",
        help="use this cluster (else KAFKA_BOOTSTRAP_SERVERS, else a local Apache Kafka "
        "started for the run); an external cluster is reached with the service's STREAMER_* "
        "TLS and SASL settings",
    )
    parser.add_argument("--out", type=Path, help="output dir (default bench-results/<date>)")
    parser.add_argument("--step-s", type=float, help="seconds per load step")
    parser.add_argument(
        "--patience",
        type=int,
        help="failing ramp steps tolerated before a ramp ends (a noisy shared machine: "
        "every contender then runs the same offered rates); default per profile",
    )
    parser.add_argument("--arrival", choices=["constant", "poisson"], default="constant")
    parser.add_argument(
        "--force-artifact",
        action="store_true",
        help="load an artifact whose int8 parity check failed (tiny test models)",
    )
    parser.add_argument("--data-dir", help="shared data sets (default ../shared/data)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[;KEY=VALUE]",
        help="also run the service with these STREAMER_* settings as contender "
        "streamer-LABEL (repeatable), e.g. linger:STREAMER_DISPATCH_WHEN_IDLE=false",
    )
    parser.add_argument(
        "--compression",
        metavar="CODEC[,CODEC]",
        help=f"also run the service once per result codec ({', '.join(CODECS)}) as contender "
        "streamer-CODEC (STREAMER_PRODUCER_COMPRESSION), all in this run",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, then write results.json, results.md and the plots."""
    artifact = default_artifact(args.artifact)
    if artifact is None:
        return 2
    contenders = tuple(c for c in args.contenders.split(",") if c)
    unknown = set(contenders) - set(ALL_CONTENDERS)
    if unknown:
        print(f"unknown contenders: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    try:
        variants = dict(parse_variant(v) for v in args.variant)
        if args.compression:
            variants.update(compression_variants(args.compression))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    out = args.out or REPO_ROOT / "bench-results" / time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    overrides: dict[str, object] = {"step_s": args.step_s} if args.step_s else {}
    if args.patience is not None:
        overrides["patience"] = args.patience
    if args.routes:
        overrides["routes"] = tuple(p for p in args.routes.split(",") if p)
    if args.emulate:
        overrides["emulate"] = args.emulate
    profile = args.profile or ("quick" if args.quick else "full")
    cfg = BenchConfig.preset(
        profile,
        Path(artifact).resolve(),
        out,
        contenders=contenders,
        bootstrap=args.bootstrap,
        arrival=args.arrival,
        data_root=args.data_dir,
        force_artifact=args.force_artifact,
        variants=variants,
        **overrides,
    )
    external = external_bootstrap(cfg)
    if external is not None:
        # An external cluster is reached with the service's settings (TLS, SASL): say what is
        # wrong with them before the model-only runs spend minutes.
        from streamer.kafka.clients import command_settings

        if command_settings("streamer bench", bootstrap_servers=external) is None:
            return 2
    started = time.monotonic()
    from streamer.kafka.local_broker import BrokerStartError

    def interrupted(signum: int, frame: object) -> None:
        # Out of the loop at once (asyncio.run then cancels the remaining tasks, whose finally
        # blocks stop their contender) and through the finally below. asyncio's own SIGINT
        # handler only cancels the main task, which a library may swallow: the ramp went on.
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = asyncio.run(run_bench(cfg, ["streamer", "bench", *sys.argv[2:]]))
    except BrokerStartError as exc:  # no broker, no benchmark: say why instead of a traceback
        print(f"could not start the local Kafka broker: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: no results written", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Contenders run in their own sessions; none may outlive an interrupted run.
        stopped = kill_live_contenders()
        if stopped:
            print(f"stopped contender process groups {stopped}", file=sys.stderr)
    (out / "results.md").write_text(markdown(results))
    written = plots(results, out)
    print(
        f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {len(written)} plots "
        f"in {time.monotonic() - started:.0f} s"
    )
    print((out / "results.md").read_text())
    return 0
