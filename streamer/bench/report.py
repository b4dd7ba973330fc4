"""Benchmark results as a markdown table and PNG plots (latency and throughput vs offered load)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from streamer.bench.stages import SEGMENTS, segment_order
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
    """The step measured at the max sustained rate for `target_ms` (not a superseded one)."""
    rate = (run.get("max_sustained") or {}).get(str(target_ms))
    if rate is None:
        return None
    for step in counted_steps(run):
        if step["offered_rate"] == rate:
            return step
    return None


def counted_steps(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps the knee search counted: all but a failed first step that was re-measured."""
    return [s for s in run.get("steps", []) if not s.get("superseded")]


def _offered(step: dict[str, Any]) -> str:
    """The offered rate, marked when the step was re-measured or is the re-measurement."""
    mark = (
        " (1st, re-measured)"
        if step.get("superseded")
        else " (retake)"
        if step.get("retake")
        else ""
    )
    return _fmt(step["offered_rate"]) + mark


# --------------------------------------------------------------------------- tail attribution


def _ms(x: float | None) -> str:
    """Milliseconds at a useful precision: sub-ms segments keep two decimals."""
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2f}" if x < 1 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def tail_sets(step: dict[str, Any], route: str) -> dict[str, dict[str, Any]]:
    """A step's tail attribution for one route, by events set (`slow`, `sampled`)."""
    return {t["events"]: t for t in step.get("tail") or [] if t["route"] == route}


def pool_tail(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several steps' entries of one events set as one (rounds of a paired A/B): count-weighted
    mean ms per segment, summed count, median threshold."""
    entries = [e for e in entries if e and e["count"] > 0]
    if not entries:
        return None
    n = sum(e["count"] for e in entries)
    segs = segment_order(seg for e in entries for seg in e["mean_ms"])
    mean = {seg: sum(e["mean_ms"].get(seg, 0.0) * e["count"] for e in entries) / n for seg in segs}
    thresholds = [e["threshold_ms"] for e in entries if e.get("threshold_ms") is not None]
    return {
        "route": entries[0]["route"],
        "events": entries[0]["events"],
        "count": n,
        "threshold_ms": statistics.median(thresholds) if thresholds else None,
        "total_ms": sum(mean.values()),
        "mean_ms": mean,
    }


def largest_share(entry: dict[str, Any] | None) -> tuple[str, float] | None:
    """The segment holding the largest share of a set's time, and that share (0..1)."""
    if not entry or not entry["mean_ms"]:
        return None
    total = sum(entry["mean_ms"].values())
    seg = max(entry["mean_ms"], key=lambda k: entry["mean_ms"][k])
    return seg, (entry["mean_ms"][seg] / total if total > 0 else 0.0)


def most_above(
    slow: dict[str, Any] | None, sampled: dict[str, Any] | None
) -> tuple[str, float] | None:
    """The segment where the slow events spent the most more than the sampled ones (ms)."""
    if not slow or not sampled:
        return None
    gap = {k: v - sampled["mean_ms"].get(k, 0.0) for k, v in slow["mean_ms"].items()}
    if not gap:
        return None
    seg = max(gap, key=lambda k: gap[k])
    return seg, gap[seg]


def tail_header(segments: list[str], first: list[str]) -> list[str]:
    """Table head: the leading columns, then a column per segment, the total and the verdicts."""
    cols = [*first, *segments, "total ms", "largest share", "most above sampled"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def tail_cells(
    slow: dict[str, Any] | None, sampled: dict[str, Any] | None, segments: list[str]
) -> list[str]:
    """Per segment `slow mean (sampled mean)`, the largest share of the slow set in bold; then
    the totals, the largest share and the segment most above the sample."""
    top = largest_share(slow)
    cells = []
    for seg in segments:
        a = slow["mean_ms"].get(seg) if slow else None
        b = sampled["mean_ms"].get(seg) if sampled else None
        cell = _ms(a)
        if top is not None and seg == top[0]:
            cell = f"**{cell}**"
        cells.append(f"{cell} ({_ms(b)})")
    cells.append(
        f"{_ms(slow['total_ms'] if slow else None)} ({_ms(sampled['total_ms'] if sampled else None)})"
    )
    cells.append(f"{top[0]} {top[1]:.0%}" if top else "-")
    above = most_above(slow, sampled)
    cells.append(f"{above[0]} +{_ms(above[1])}" if above and above[1] > 0 else "-")
    return cells


def _tail_section(results: dict[str, Any]) -> list[str]:
    """Per contender/route, one row per step: where the slowest events spent their time."""
    runs = [r for r in results["runs"] if any(tail_sets(s, r["route"]) for s in r.get("steps", []))]
    if not runs:
        return []
    lines = [
        "",
        "## Where the slowest events spent their time",
        "",
        "The service splits every event's time (producer's timestamp -> all results of its batch "
        "acknowledged, acks=all) at its hand-offs; the segments sum to that time. Per step: the "
        "mean ms per segment of the *slow* events (above the service's running P99 when they "
        "finished: about the slowest 1%) and, in brackets, of a uniform sample of all events. "
        "**Bold**: the segment holding the largest share of the slow events' time; *most above "
        "sampled*: where they spent the most more than a typical event. The threshold is the "
        "running P99 at the end of the step (over the service's last events, so it can trail a "
        "step's own P99: the slow share then exceeds 1%).",
    ]
    for run in runs:
        steps = [s for s in run["steps"] if tail_sets(s, run["route"])]
        segments = segment_order(
            seg for s in steps for t in tail_sets(s, run["route"]).values() for seg in t["mean_ms"]
        )
        lines += ["", f"**{run['contender']} / {run['route']}**", ""]
        lines += tail_header(segments, ["offered/s", "threshold ms", "slow events"])
        for step in steps:
            sets = tail_sets(step, run["route"])
            slow, sampled = sets.get("slow"), sets.get("sampled")
            n = slow["count"] if slow else 0
            results_n = step["sink"]["unique"]
            share = f" ({n / results_n:.1%})" if results_n else ""
            threshold = next(
                (t["threshold_ms"] for t in sets.values() if t.get("threshold_ms")), None
            )
            cells = [
                _offered(step),
                _ms(threshold),
                f"{n:,}{share}",
                *tail_cells(slow, sampled, segments),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


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
        *_warmup_lines(results),
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
    lines += _tail_section(results)
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
                f"| {_label(run, step)} | {run['route']} | {_offered(step)} | "
                f"{_fmt(s['unique'])} | {_fmt(s['missing'])} | {_fmt(s['duplicates'])} | "
                f"{_fmt(b['p50_ms'], 2)} | {_fmt(b['p99_ms'], 2)} | {_fmt(b['max_ms'], 1)} | "
                f"{_fmt(s['throughput'], 1)} | {_fmt(step['load']['p99_behind_ms'], 2)} | "
                f"{_fmt(step['cpu_s_per_1k'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def _warmup_lines(results: dict[str, Any]) -> list[str]:
    """How the contenders were warmed up, and the first steps that were measured again."""
    warm = [r["warmup"] for r in results["runs"] if r.get("warmup", {}).get("duration_s")]
    lines = []
    if warm:
        secs = sorted({w["duration_s"] for w in warm})
        lines.append(
            f"- warm-up: {' / '.join(f'{x:g}' for x in secs)} s at the first step's rate before "
            "each ramp, unmeasured; a failed first step is measured once more and its retake "
            "counts instead (both are in the step table)"
        )
    redone = [
        f"{r['contender']}/{r['route']} at {_fmt(s['offered_rate'])}/s"
        for r in results["runs"]
        for s in r.get("steps", [])
        if s.get("superseded")
    ]
    if redone:
        lines.append(f"- first step re-measured: {', '.join(redone)}")
    return lines


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
            steps = counted_steps(r)
            xs = [s["offered_rate"] for s in steps]
            for pct, name, style in PERCENTILE_STYLES:
                ax.plot(
                    xs,
                    [s["sink"]["broker"][pct] for s in steps],
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
            steps = counted_steps(r)
            xs = [s["offered_rate"] for s in steps]
            ys = [s["sink"]["unique"] / max(s["load"]["duration_s"], 1e-9) for s in steps]
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

        chart = _stage_chart(path_runs, route, out_dir)
        if chart is not None:
            written.append(chart)
    return written


STAGE_AS_SEGMENT = {"model": "run"}
"""A batch stage drawn in the colour of the segment it corresponds to (the rest share names)."""


def part_colours(names: list[str]) -> dict[str, Any]:
    """One colour per segment, fixed by pipeline order (`SEGMENTS`), so a segment has the same
    colour in every panel and every chart; batch stages take their segment's colour, names
    this bench does not know yet the next ones."""
    import matplotlib

    tab10, tab20 = matplotlib.colormaps["tab10"], matplotlib.colormaps["tab20"]
    palette = [tab10(i) for i in range(10)] + [tab20(i) for i in range(1, 20, 2)]
    canon = [STAGE_AS_SEGMENT.get(n, n) for n in names]
    order = [*SEGMENTS, *sorted(set(canon) - set(SEGMENTS))]
    return {n: palette[order.index(c) % len(palette)] for n, c in zip(names, canon, strict=True)}


def _panels(run: dict[str, Any]) -> list[tuple[str, list[tuple[str, dict[str, float]]]]]:
    """A contender's panels: (title, [(x label, part -> mean ms)] per step). With tail
    attribution: the slow events and the sampled events; without (an older service): the
    batch stages."""
    route = run["route"]
    steps = run.get("steps", [])

    def label(step: dict[str, Any], n: int | None = None) -> str:
        x = _fmt(step["offered_rate"], 0) + ("\n1st try" if step.get("superseded") else "")
        return x + (f"\nn={n:,}" if n is not None else "")

    tailed = [s for s in steps if tail_sets(s, route)]
    if tailed:
        panels = []
        for kind, title in (
            ("slow", "slow events (above the running P99)"),
            ("sampled", "sampled events (uniform sample)"),
        ):
            bars = []
            for s in tailed:
                entry = tail_sets(s, route).get(kind)
                bars.append(
                    (label(s, entry["count"] if entry else 0), entry["mean_ms"] if entry else {})
                )
            panels.append((title, bars))
        return panels
    staged = [s for s in steps if s.get("stages")]
    if not staged:
        return []
    bars = [
        (label(s), {st["stage"]: st["mean_ms"] for st in s["stages"] if st["route"] == route})
        for s in staged
    ]
    return [("batch stages (mean ms per batch)", bars)]


def _stage_chart(runs: list[dict[str, Any]], route: str, out_dir: Path) -> Path | None:
    """stages-<route>.png: a row per contender with attribution or stage metrics; each step a
    100%-stacked bar of where the time went, its total mean ms written above it, so an
    overloaded step of hundreds of ms leaves the shares of every other step readable."""
    import matplotlib.pyplot as plt

    rows = [(r, p) for r in runs if (p := _panels(r))]
    if not rows:
        return None
    ncols = max(len(p) for _, p in rows)
    nsteps = max(len(bars) for _, p in rows for _, bars in p)
    fig, axes = plt.subplots(
        len(rows),
        ncols,
        figsize=(max(4.5, 0.55 * nsteps + 1.5) * ncols, 3.6 * len(rows) + 0.8),
        squeeze=False,
    )
    names: list[str] = []
    for _, panels in rows:
        for _, bars in panels:
            names += [n for _, parts in bars for n in parts if n not in names]
    stage_names = [n for n in STAGES if n in names and n not in SEGMENTS]
    names = segment_order(n for n in names if n not in stage_names)
    # batch stages after the segments, in their own pipeline order
    names = (
        [n for n in names if n in SEGMENTS] + stage_names + [n for n in names if n not in SEGMENTS]
    )
    colours = part_colours(names)
    for row, (run, panels) in enumerate(rows):
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(panels):
                ax.set_visible(False)
                continue
            title, bars = panels[col]
            xs = list(range(len(bars)))
            bottom = [0.0] * len(bars)
            totals = [sum(parts.values()) for _, parts in bars]
            for name in names:
                vals = [
                    100.0 * parts.get(name, 0.0) / t if t > 0 else 0.0
                    for (_, parts), t in zip(bars, totals, strict=True)
                ]
                if any(vals):
                    ax.bar(xs, vals, bottom=bottom, color=colours[name], label=name, width=0.75)
                    bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            for x, t in zip(xs, totals, strict=True):
                ax.text(
                    x,
                    101.5,
                    _ms(t) if t > 0 else "-",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90 if len(bars) > 8 else 0,
                )
            ax.set_xticks(xs, [lab for lab, _ in bars], fontsize=7)
            ax.set_ylim(0, 118 if len(bars) > 8 else 110)
            ax.set_yticks([0, 25, 50, 75, 100])
            ax.set(
                xlabel="offered load (events/s)",
                ylabel="share of the time (%); mean ms above",
                title=f"{run['contender']} {route}: {title}",
            )
            ax.title.set_fontsize(9)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    ordered = [n for n in names if n in handles]
    if "run" in ordered and "model" in ordered:  # one colour, one legend entry
        ordered.remove("model")
    fig.legend(
        [handles[n] for n in ordered],
        [f"{n} / model (batch stage)" if n == "run" and "model" in handles else n for n in ordered],
        loc="lower center",
        ncol=min(len(ordered), 8),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.06 if len(rows) > 1 else 0.1, 1, 1))
    path = out_dir / f"stages-{route}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(fig: Any, route: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(route, dpi=110)
    plt.close(fig)
    return route
