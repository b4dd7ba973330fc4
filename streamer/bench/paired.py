"""Paired A/B of service variants at fixed offered rates, interleaved step by step.

`streamer bench` runs each contender's whole ramp, then the next one's: on a shared machine
whose load drifts over minutes, the contenders then meet different machines. Here every
variant's service runs for the whole measurement (each on its own fresh topics, idle while the
others are measured), and at each offered rate the variants take their steps back to back, in
an order that alternates from rate to rate and round to round. A step is the harness's own
(`harness.measure_step`: open-loop load, the read_committed sink, CPU); nothing ends early, so
every variant meets every rate. An exactly-once variant is measured by when the sink saw its
results (`observed`); the others by both clocks. Before the first measured step every variant
is warmed up at the first rate, unmeasured (`knee.warmup_plan`: the bench's rule). Where the
service exports its tail attribution, each step records where its slowest events spent their
time (`step["tail"]`), and the report pools it over rounds per variant and rate.

    python -m streamer.bench.paired --route intent --rates 50,100,200 --rounds 2 \\
        --variant alos:STREAMER_DELIVERY=at-least-once --variant eos:STREAMER_DELIVERY=exactly-once
    python -m streamer.bench.paired --route intent --rates 50,200 --compression none,gzip,lz4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from streamer.bench.events import EventFactory
from streamer.bench.harness import (
    ROUTE_KIND,
    BenchConfig,
    Contender,
    Topics,
    broker_for,
    compression_variants,
    contender_command,
    create_topics,
    delete_topics,
    measure_step,
    parse_variant,
    run_meta,
)
from streamer.bench.knee import warmup_plan
from streamer.bench.report import (
    largest_share,
    pool_tail,
    step_clock,
    tail_cells,
    tail_header,
    tail_sets,
)
from streamer.bench.stages import segment_order

DRAIN_S = 10.0


async def run_paired(
    cfg: BenchConfig, route: str, rates: list[float], rounds: int, argv: list[str]
) -> dict[str, Any]:
    """Start every variant's service, then measure each rate on each variant, interleaved."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%H%M%S", time.gmtime())
    results: dict[str, Any] = {"meta": run_meta(cfg, argv), "route": route, "steps": []}
    labels = list(cfg.variants)
    with broker_for(cfg, print) as (bootstrap, _pid, broker_meta):
        results["meta"]["broker"] = broker_meta
        topics = {label: Topics.fresh(run_id, label, route) for label in labels}
        running: dict[str, Contender] = {}
        try:
            for label in labels:
                t = topics[label]
                await create_topics(bootstrap, t.all(), cfg.partitions, {t.results, t.source})
                name = f"streamer-{label}"
                argv_, env, port = contender_command(
                    name, cfg, bootstrap, route, t, f"paired-{run_id}-{label}"
                )
                contender = Contender(name, argv_, env, port, cfg.out_dir / f"{label}.log")
                why = await contender.start(cfg.ready_timeout_s)
                if why is not None:
                    raise RuntimeError(f"{name} did not start: {why}")
                running[label] = contender
            factory = EventFactory(ROUTE_KIND[route], cfg.data_root)
            from streamer.bench.sink import Sink

            sinks = {label: Sink(bootstrap, topics[label].results) for label in labels}
            for sink in sinks.values():
                await sink.start()
            seed = 1
            # Warm-up, unmeasured, at the first measured rate: first batches of each shape,
            # producers, transactions. The same rule as the bench's ramps.
            warm_rate, warm_s = warmup_plan(rates[0], cfg.warmup_s)
            results["warmup"] = {"offered_rate": warm_rate, "duration_s": warm_s, "p99_ms": {}}
            for label in labels:
                warm = await _step(cfg, bootstrap, topics, factory, sinks, running, label,
                                   warm_rate, warm_s, seed)  # fmt: skip
                results["warmup"]["p99_ms"][label] = step_clock(warm)["p99_ms"]
            for rnd in range(rounds):
                for i, rate in enumerate(rates):
                    order = labels if (i + rnd) % 2 == 0 else labels[::-1]
                    for label in order:
                        seed += 1
                        step = await _step(cfg, bootstrap, topics, factory, sinks, running,
                                           label, rate, cfg.step_s, seed)  # fmt: skip
                        step.update(variant=label, round=rnd)
                        results["steps"].append(step)
                        print(_line(step), flush=True)
                        if tail := _tail_line(step, route):
                            print(tail, flush=True)
            for sink in sinks.values():
                await sink.stop()
        finally:
            for contender in running.values():
                await contender.stop()
            await delete_topics(bootstrap, [n for t in topics.values() for n in t.all()])
    results["tail"] = tail_summary(results)
    (cfg.out_dir / "paired.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (cfg.out_dir / "paired.md").write_text(report(results))
    return results


async def _step(
    cfg: BenchConfig,
    bootstrap: str,
    topics: dict[str, Topics],
    factory: EventFactory,
    sinks: dict[str, Any],
    running: dict[str, Contender],
    label: str,
    rate: float,
    duration_s: float,
    seed: int,
) -> dict[str, Any]:
    # Drain: a step ends once every result is in, or after this (then they count missing).
    step = await measure_step(
        cfg, bootstrap, topics[label], factory, sinks[label], running[label], None, rate,
        duration_s, DRAIN_S, seed,
    )  # fmt: skip
    return step


def _line(step: dict[str, Any]) -> str:
    c, o, s = step_clock(step), step["sink"]["observed"], step["sink"]
    return (
        f"  {step['variant']:>10} @ {step['offered_rate']:7.1f}/s (round {step['round']}): "
        f"p50 {c['p50_ms']:8.2f}  p99 {c['p99_ms']:8.2f} ms ({step.get('clock', 'broker')}; "
        f"observed p99 {o['p99_ms']:8.2f})  {s['throughput']:7.1f}/s  "
        f"missing={s['missing']} dup={s['duplicates']}  cpu {step['cpu_s_per_1k']:.2f} s/1k"
    )


def _tail_line(step: dict[str, Any], route: str) -> str:
    """Where the step's slowest events spent their time, in one line (empty without it)."""
    sets = tail_sets(step, route)
    slow, sampled = sets.get("slow"), sets.get("sampled")
    if not slow:
        return ""
    top = largest_share(slow)
    parts = " ".join(
        f"{seg} {ms:.2f}" + (f" ({sampled['mean_ms'][seg]:.2f})" if sampled else "")
        for seg, ms in slow["mean_ms"].items()
    )
    threshold = slow.get("threshold_ms")
    return (
        f"  {'':>10}   slow {slow['count']} > "
        f"{f'{threshold:.1f}' if threshold is not None else '-'} ms: {parts}"
        + (f"  largest {top[0]} {top[1]:.0%}" if top else "")
    )


def tail_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant and rate, the slow and sampled sets pooled over the rounds (for the JSON
    and the report): count-weighted mean ms per segment, summed counts, median threshold."""
    route = results["route"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for step in results["steps"]:
        if tail_sets(step, route):
            groups.setdefault((step["variant"], step["offered_rate"]), []).append(step)
    out = []
    for (variant, rate), steps in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sets = [tail_sets(s, route) for s in steps]
        out.append(
            {
                "variant": variant,
                "offered_rate": rate,
                "rounds": len(steps),
                "results": sum(s["sink"].get("unique", 0) for s in steps),
                "slow": pool_tail([x["slow"] for x in sets if "slow" in x]),
                "sampled": pool_tail([x["sampled"] for x in sets if "sampled" in x]),
            }
        )
    return out


def _tail_table(results: dict[str, Any]) -> list[str]:
    summary = results.get("tail") or tail_summary(results)
    if not summary:
        return []
    segments = segment_order(
        seg for row in summary for k in ("slow", "sampled") if row[k] for seg in row[k]["mean_ms"]
    )
    lines = [
        "",
        "Where the slowest events spent their time (service-side, per segment; slow = above the "
        "service's running P99; in brackets a uniform sample of all events; pooled over rounds; "
        "**bold** = the largest share of the slow events' time):",
        "",
        *tail_header(segments, ["variant", "offered/s", "rounds", "threshold ms", "slow events"]),
    ]
    for row in summary:
        slow, sampled = row["slow"], row["sampled"]
        n = slow["count"] if slow else 0
        share = f" ({n / row['results']:.1%})" if row.get("results") else ""
        threshold = slow["threshold_ms"] if slow else None
        cells = [
            row["variant"],
            f"{row['offered_rate']:g}",
            str(row["rounds"]),
            f"{threshold:.1f}" if threshold is not None else "-",
            f"{n:,}{share}",
            *tail_cells(slow, sampled, segments),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(results: dict[str, Any]) -> str:
    """Median over rounds, per variant and rate: P50/P99 (its clock), observed P99, rate."""
    meta = results["meta"]
    lines = [
        f"# Paired A/B, route {results['route']}, {meta['date_utc']}",
        "",
        f"- command: `{meta['command']}`",
        f"- git commit: `{meta['git_commit']}`{' (dirty tree)' if meta.get('git_dirty') else ''}",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores",
        f"- model artifact: {meta['artifact']['model_name']} {meta['artifact']['model_version']}"
        + (
            f", served by an EMULATED {meta['emulated_device']} (no model runs)"
            if meta.get("emulated_device")
            else ""
        ),
        f"- steps: {meta['step_s']} s, {meta['partitions']} partitions; medians over rounds; "
        "exactly-once variants by the read_committed sink's observation clock, others by the "
        "broker append time (observed P99 given for all)"
        + (
            f"; each variant warmed up first, unmeasured, {warm['duration_s']:g} s at "
            f"{warm['offered_rate']:g}/s"
            if (warm := results.get("warmup"))
            else ""
        ),
        "",
        "| variant | offered/s | rounds | P50 ms | P99 ms | observed P99 ms | throughput/s "
        "| missing | dup | CPU s/1k |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for step in results["steps"]:
        groups.setdefault((step["variant"], step["offered_rate"]), []).append(step)
    for (variant, rate), steps in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):

        def med(get: Any, steps: list[dict[str, Any]] = steps) -> float:
            return statistics.median(get(s) for s in steps)

        lines.append(
            f"| {variant} | {rate:g} | {len(steps)} | {med(lambda s: step_clock(s)['p50_ms']):.1f} | "
            f"{med(lambda s: step_clock(s)['p99_ms']):.1f} | "
            f"{med(lambda s: s['sink']['observed']['p99_ms']):.1f} | "
            f"{med(lambda s: s['sink']['throughput']):.1f} | "
            f"{sum(s['sink']['missing'] for s in steps)} | "
            f"{sum(s['sink']['duplicates'] for s in steps)} | "
            f"{med(lambda s: s['cpu_s_per_1k']):.2f} |"
        )
    lines += _tail_table(results)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--route", choices=sorted(ROUTE_KIND), default="intent")
    p.add_argument("--rates", required=True, help="offered rates per second, comma separated")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--step-s", type=float, default=15.0)
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[;...]")
    p.add_argument(
        "--compression",
        metavar="CODEC[,CODEC]",
        help="one variant per result codec (label = codec, STREAMER_PRODUCER_COMPRESSION), "
        "e.g. none,gzip,snappy,lz4,zstd",
    )
    p.add_argument(
        "--emulate",
        choices=("h200", "inf2"),
        help="every variant serves through this EMULATED accelerator (the host path alone)",
    )
    p.add_argument("--artifact", type=Path, help="model (default: the shipped one)")
    p.add_argument("--data-dir", help="shared data sets (default ../shared/data)")
    p.add_argument("--bootstrap", help="use this cluster (else a local Kafka for the run)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from streamer.bench.command import default_artifact

    artifact = default_artifact(args.artifact)
    if artifact is None:
        return 2
    variants = dict(parse_variant(v) for v in args.variant)
    if args.compression:
        variants.update(compression_variants(args.compression))
    if not variants:
        p.error("give --variant or --compression")
    cfg = BenchConfig.preset(
        "quick", Path(artifact).resolve(), args.out, contenders=(), bootstrap=args.bootstrap,
        data_root=args.data_dir, variants=variants, step_s=args.step_s, emulate=args.emulate,
    )  # fmt: skip
    rates = [float(r) for r in args.rates.split(",") if r]
    results = asyncio.run(
        run_paired(cfg, args.route, rates, args.rounds, ["streamer.bench.paired", *sys.argv[1:]])
    )
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
