"""Benchmark results as a markdown table and PNG plots (latency and throughput vs offered load)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from streamer.pipeline.metrics import STAGES

MIN_RESULTS_FOR_P99 = 1_000

# one colour per contender, one line style per percentile
PERCENTILE_STYLES = (("p50_ms", "P50", ":"), ("p99_ms", "P99", "-"), ("p999_ms", "P99.9", "--"))


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _count(n: int) -> str:
    return f"{n:,}" + ("*" if n < MIN_RESULTS_FOR_P99 else "")


def best_step(run: dict[str, Any], target_ms: float) -> dict[str, Any] | None:
    """The step measured at the max sustained rate for `target_ms`."""
    rate = (run.get("max_sustained") or {}).get(str(target_ms))
    if rate is None:
        return None
    for step in run["steps"]:
        if step["offered_rate"] == rate:
            return step
    return None


def _passthrough_shares(results: dict[str, Any]) -> list[str]:
    """Each contender's max sustained rate as a share of passthrough's (the client's limit)."""
    ok = [r for r in results["runs"] if r["status"] == "ok" and r["contender"] != "model-only"]
    limit = {
        (r["route"], t): (r.get("max_sustained") or {}).get(str(t))
        for r in ok
        if r["contender"] == "passthrough"
        for t in r["targets_ms"]
    }
    if not any(limit.values()):
        return []
    lines = [
        "",
        "Max sustained rate as a share of passthrough (consume -> same-sized result -> commit, "
        "nothing else: the Kafka client's limit on this machine):",
        "",
        "| contender | route | P99 target | max sustained (/s) | share of passthrough |",
        "|---|---|---|---|---|",
    ]
    for run in ok:
        for target in run["targets_ms"]:
            rate = (run.get("max_sustained") or {}).get(str(target))
            base = limit.get((run["route"], target))
            share = f"{rate / base:.0%}" if rate and base else "—"
            lines.append(
                f"| {run['contender']} | {run['route']} | {target:g} ms | {_fmt(rate)} | {share} |"
            )
    return lines


def _ceiling_fractions(
    results: dict[str, Any], mixes: list[tuple[str, dict[str, Any]]]
) -> list[str]:
    """Each contender's max sustained rate as a share of the mix ceiling, per thread count."""
    lines = [
        "",
        "Max sustained rate as a share of the mix ceiling:",
        "",
        "| contender | route | P99 target | max sustained (/s) | "
        + " | ".join(f"share of {m['threads']}-thread mix" for _, m in mixes[:2])
        + " |",
        "|---|---|---|---|" + "---|" * len(mixes[:2]),
    ]
    for run in results["runs"]:
        if run["contender"] == "model-only" or run["status"] != "ok":
            continue
        ceilings = [m for route, m in mixes if route == run["route"]]
        for target in run["targets_ms"]:
            rate = (run.get("max_sustained") or {}).get(str(target))
            if not rate or not ceilings:
                continue
            shares = " | ".join(f"{rate / m['items_per_s']:.0%}" for m in ceilings[:2])
            lines.append(
                f"| {run['contender']} | {run['route']} | {target:g} ms | {_fmt(rate)} | {shares} |"
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The summary table: max sustained rate per target, and the latency/CPU at that rate."""
    meta = results["meta"]
    emulated = meta.get("emulated_device")
    lines = [
        f"# Benchmark {meta['date_utc']}"
        + (f" (EMULATED {emulated} device: no model ran)" if emulated else ""),
        "",
        *(
            [
                f"**Every contender served through the EMULATED {emulated} accelerator**: each "
                "batch slept the device's latency for its shape and answered a deterministic "
                "function of its tokens. These figures measure the host path, not a model.",
                "",
            ]
            if emulated
            else []
        ),
        f"- command: `{meta['command']}`",
        f"- git commit: `{meta['git_commit']}`{' (dirty tree)' if meta.get('git_dirty') else ''}",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['platform']}",
        f"- broker: {meta.get('broker', {}).get('kind', 'none')} "
        f"{meta.get('broker', {}).get('version', '')}",
        f"- model artifact: {meta['artifact']['model_name']} {meta['artifact']['model_version']} "
        f"(target {meta['artifact']['target']}, `{meta['artifact']['path']}`)",
        f"- steps: {meta['step_s']} s each, {meta['arrival']} arrivals, "
        f"{meta['partitions']} partitions; latency = scheduled time -> result's broker "
        "append time (LogAppendTime); `observed` = seen by a downstream consumer "
        "(read_committed); a contender marked `(observed)` (exactly-once) is measured by that "
        "clock throughout: its append time is when a result entered its transaction, not when "
        "it became readable",
        f"- results marked * are fewer than {MIN_RESULTS_FOR_P99:,}: their P99 is a handful of "
        "samples (P99.9 needs 10,000+); use the full run for published numbers",
        "",
        "| contender | route | P99 target | max sustained rate (/s) | P50 ms | P99 ms | P99.9 ms "
        "| max ms | P99 observed ms | results | CPU s/1k events | broker CPU s/1k |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        if run["contender"] == "model-only" or run["status"] != "ok":
            continue
        for target in run["targets_ms"]:
            step = best_step(run, target)
            rate = (run.get("max_sustained") or {}).get(str(target))
            if step is None:
                lines.append(
                    f"| {run['contender']} | {run['route']} | {target:g} ms | "
                    f"none met it | | | | | | | | |"
                )
                continue
            b, o = step_clock(step), step["sink"]["observed"]
            lines.append(
                f"| {_label(run, step)} | {run['route']} | {target:g} ms | {_fmt(rate)} | "
                f"{_fmt(b['p50_ms'], 2)} | {_fmt(b['p99_ms'], 2)} | {_fmt(b['p999_ms'], 2)} | "
                f"{_fmt(b['max_ms'], 2)} | {_fmt(o['p99_ms'], 2)} | {_count(step['sink']['unique'])} | "
                f"{_fmt(step['cpu_s_per_1k'], 2)} | {_fmt(step['broker_cpu_s_per_1k'], 2)} |"
            )
    lines += _passthrough_shares(results)
    model_rows = [
        r for r in results["runs"] if r["contender"] == "model-only" and r["status"] == "ok"
    ]
    if model_rows:
        lines += [
            "",
            "## Model only (no Kafka): the ceiling",
            "",
            "| route | batch | seq len | ms/batch (median) | ms/batch (P99) | items/s |",
            "|---|---|---|---|---|---|",
        ]
        for r in model_rows:
            for b in r["buckets"]:
                lines.append(
                    f"| {r['route']} | {b['batch']} | {b['seq_len']} | "
                    f"{_fmt(b['median_ms'], 2)} | {_fmt(b['p99_ms'], 2)} | "
                    f"{_fmt(b['items_per_s'], 0)} |"
                )
            lines.append(
                f"| {r['route']} | CPU s per 1k items: {_fmt(r['cpu_s_per_1k'], 2)} | | | | |"
            )
        mixes = [(r["route"], m) for r in model_rows for m in r.get("mix", [])]
        if mixes:
            lines += [
                "",
                "The bench's own event mix, batched as the service batches it (its batch "
                "policy: pairs grouped by length), run back to back: the ceiling a Kafka "
                "contender is held against:",
                "",
                "| route | threads | events | batches | mean rows/batch | items/s |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {route} | {m['threads']} | {m['events']} | {m['batches']} | "
                f"{_fmt(m['mean_rows'], 1)} | {_fmt(m['items_per_s'], 0)} |"
                for route, m in mixes
            ]
            lines += _ceiling_fractions(results, mixes)
    cut = [f"{r['contender']}/{r['route']}" for r in results["runs"] if r.get("stopped_by_budget")]
    if cut:
        lines += ["", f"Note: the time budget ended the ramp early for {', '.join(cut)}: "
                  "their max sustained rate is a lower bound."]  # fmt: skip
    stamped = sum(
        s["sink"].get("create_time_stamped", 0) for r in results["runs"] for s in r.get("steps", [])
    )
    if stamped:
        lines += ["", f"Note: {stamped:,} results carried the producer's CreateTime (the broker "
                  "ignored LogAppendTime): their latency ends at the contender's send, not at "
                  "the broker's acknowledgement."]  # fmt: skip
    problems = [r for r in results["runs"] if r["status"] != "ok"]
    if problems:
        lines += ["", "## Not measured", ""]
        lines += [
            f"- {r['contender']}/{r['route']}: {r['status']}: {r.get('reason', '')[:500]}"
            for r in problems
        ]
    lines += [
        "",
        "## Every step",
        "",
        "| contender | route | offered/s | results | missing | dup | P50 ms | P99 ms | "
        "max ms | throughput/s | generator P99 slip ms | CPU s/1k |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        for step in run.get("steps", []):
            s, b = step["sink"], step_clock(step)
            lines.append(
                f"| {_label(run, step)} | {run['route']} | {_fmt(step['offered_rate'])} | "
                f"{_fmt(s['unique'])} | {_fmt(s['missing'])} | {_fmt(s['duplicates'])} | "
                f"{_fmt(b['p50_ms'], 2)} | {_fmt(b['p99_ms'], 2)} | {_fmt(b['max_ms'], 1)} | "
                f"{_fmt(s['throughput'], 1)} | {_fmt(step['load']['p99_behind_ms'], 2)} | "
                f"{_fmt(step['cpu_s_per_1k'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def step_clock(step: dict[str, Any]) -> dict[str, Any]:
    """The latency histogram a step is judged by: the broker append time, or for an
    exactly-once contender (`clock` "observed") when the read_committed sink saw the result."""
    return step["sink"][step.get("clock", "broker")]


def _label(run: dict[str, Any], step: dict[str, Any]) -> str:
    """The contender's name, marked when its latency is the sink's observation."""
    return run["contender"] + (" (observed)" if step.get("clock") == "observed" else "")


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """latency-<route>.png, throughput-<route>.png and (if scraped) stages-<route>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    runs = [r for r in results["runs"] if r.get("steps")]
    for route in sorted({r["route"] for r in runs}):
        path_runs = [r for r in runs if r["route"] == route]
        fig, ax = plt.subplots(figsize=(8, 5))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, r in enumerate(path_runs):
            xs = [s["offered_rate"] for s in r["steps"]]
            for pct, name, style in PERCENTILE_STYLES:
                ax.plot(
                    xs,
                    [s["sink"]["broker"][pct] for s in r["steps"]],
                    style,
                    color=colors[i % len(colors)],
                    marker="o",
                    label=f"{r['contender']} {name}",
                )
        for t in path_runs[0]["targets_ms"]:
            ax.axhline(t, color="grey", linewidth=0.8)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="offered load (events/s)",
            ylabel="latency to broker ack (ms)",
            title=f"{route}: latency vs offered load",
        )
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        written.append(_save(fig, out_dir / f"latency-{route}.png"))

        fig, ax = plt.subplots(figsize=(8, 5))
        top = 1.0
        for r in path_runs:
            xs = [s["offered_rate"] for s in r["steps"]]
            ys = [s["sink"]["unique"] / max(s["load"]["duration_s"], 1e-9) for s in r["steps"]]
            top = max(top, *xs)
            ax.plot(xs, ys, marker="o", label=r["contender"])
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="offered")
        ax.set(
            xlabel="offered load (events/s)",
            ylabel="results per second of load",
            title=f"{route}: throughput vs offered load",
        )
        ax.legend()
        ax.grid(True, alpha=0.3)
        written.append(_save(fig, out_dir / f"throughput-{route}.png"))

        staged = [r for r in path_runs if any(s.get("stages") for s in r["steps"])]
        for r in staged:
            fig, ax = plt.subplots(figsize=(8, 5))
            steps = [s for s in r["steps"] if s.get("stages")]
            seen = {st["stage"] for s in steps for st in s["stages"]}
            # pipeline order (fetch, queue, linger, model, produce), then anything new
            names = [n for n in STAGES if n in seen] + sorted(seen - set(STAGES))
            bottom = [0.0] * len(steps)
            labels = [_fmt(s["offered_rate"], 0) for s in steps]
            for name in names:
                vals = [
                    next((st["mean_ms"] for st in s["stages"] if st["stage"] == name), 0.0)
                    for s in steps
                ]
                ax.bar(labels, vals, bottom=bottom, label=name)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            ax.set(
                xlabel="offered load (events/s)",
                ylabel="mean ms per batch stage",
                title=f"{r['contender']} {route}: where the time goes",
            )
            ax.legend()
            written.append(_save(fig, out_dir / f"stages-{route}.png"))
    return written


def _save(fig: Any, route: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(route, dpi=110)
    plt.close(fig)
    return route
