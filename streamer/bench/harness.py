"""Side-by-side benchmark: each contender on fresh topics, offered load stepped up to the knee.

For every Kafka contender and route: create fresh topics (results topic stamped with the
broker's LogAppendTime, so a result's timestamp *is* its broker acknowledgement), start the
contender as a subprocess, wait until it is ready, warm it up, then run fixed-rate open-loop
steps chosen by `KneeSearch`. Each step records latency (to broker append and to downstream
observation), missing/duplicate results, and CPU seconds of the contender's process tree and
of the broker's JVM. A contender that fails to start is skipped with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streamer.bench.cpu import CpuMeter, listening_pid
from streamer.bench.events import EventFactory
from streamer.bench.knee import WARMUP_S, KneeSearch, StepOutcome, warmup_plan
from streamer.bench.loadgen import Arrival, new_run_tag, run_load, schedule
from streamer.bench.report import step_clock
from streamer.bench.sink import LatencyRecorder, Sink
from streamer.bench.stages import (
    GC_METRIC,
    parse_stages,
    parse_tail,
    scrape_text,
    stage_deltas,
    tail_deltas,
)
from streamer.bench.stages import ready as http_ready
from streamer.kafka.local_broker import free_port

KAFKA_CONTENDERS = ("streamer", "naive", "peer", "passthrough")
ALL_CONTENDERS = ("model-only", *KAFKA_CONTENDERS)
ROUTE_KIND = {"intent": "query", "duplicate": "pair"}
VARIANT_LABEL = re.compile(r"[a-z0-9_]{1,32}")


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``LABEL:KEY=VALUE[;KEY=VALUE...]`` -> (label, env); STREAMER_* keys, or PYTHONPATH=DIR
    to run the service from another source tree (a before/after A/B of a code change)."""
    label, sep, assignments = spec.partition(":")
    if not sep or not VARIANT_LABEL.fullmatch(label):
        raise ValueError(f"variant {spec!r}: expected LABEL:KEY=VALUE[;KEY=VALUE], LABEL [a-z0-9_]")
    env: dict[str, str] = {}
    for item in filter(None, assignments.split(";")):
        key, eq, value = item.partition("=")
        if not eq or not (key.startswith("STREAMER_") or key == "PYTHONPATH"):
            raise ValueError(f"variant {spec!r}: {item!r} is not STREAMER_KEY=VALUE or PYTHONPATH")
        env[key] = value
    if not env:
        raise ValueError(f"variant {spec!r}: no settings given")
    return label, env


CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def compression_variants(spec: str) -> dict[str, dict[str, str]]:
    """``gzip,lz4`` -> one service variant per producer codec, labelled by the codec
    (contender ``streamer-gzip``: STREAMER_PRODUCER_COMPRESSION=gzip), so every codec is
    measured in the same run, on the same broker and machine load."""
    codecs = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in CODECS]
    if unknown or not codecs:
        raise ValueError(f"--compression {spec!r}: expected a comma list of {', '.join(CODECS)}")
    return {c: {"STREAMER_PRODUCER_COMPRESSION": c} for c in dict.fromkeys(codecs)}


@dataclass
class PathPlan:
    """How to search one route: latency targets (the first is the headline) and the ramp."""

    targets_ms: tuple[float, ...]
    start_rate: float
    growth: float
    max_steps: int
    drain_s: float


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; `preset()` builds the documented profiles."""

    artifact: Path
    out_dir: Path
    contenders: tuple[str, ...] = ALL_CONTENDERS
    routes: tuple[str, ...] = ("intent", "duplicate")
    bootstrap: str | None = None
    step_s: float = 30.0
    warmup_s: float = WARMUP_S
    """Unmeasured warm-up at the first measured rate before a contender's first step."""
    refine_steps: int = 2
    arrival: Arrival = "constant"
    partitions: int = 4
    ready_timeout_s: float = 120.0
    model_only_budget_s: float = 2.0
    budget_s: float | None = None
    """Wall-clock budget of the whole run; shared evenly by the contender runs still to go."""
    plans: dict[str, PathPlan] = field(default_factory=dict)
    data_root: str | None = None
    profile: str = "full"
    force_artifact: bool = False
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    """Extra streamer contenders, ``streamer-<label>``: the service with these env overrides
    (a tuning A/B measured in the same run, on the same broker, as the shipped defaults)."""
    emulate: str | None = None
    """Every contender serves through this EMULATED accelerator (the host path alone)."""
    patience: int = 0
    """Failing ramp steps tolerated before the ramp stops (noise on a shared machine)."""

    @classmethod
    def preset(cls, profile: str, artifact: Path, out_dir: Path, **overrides: Any) -> BenchConfig:
        """Documented presets: `quick` (under 10 minutes on 2 cores), `full` (a quiet machine,
        long steps so P99.9 means something), `gpu` (a few minutes on one H100/H200, rates
        starting where a GPU's interesting region starts)."""
        base: dict[str, Any] = {}
        if profile == "quick":
            plans = {
                "intent": PathPlan((10.0, 50.0), 50.0, 2.0, 6, 3.0),
                "duplicate": PathPlan((1000.0,), 10.0, 2.5, 4, 5.0),
            }
            base = dict(step_s=6.0, refine_steps=0, model_only_budget_s=0.5,
                        ready_timeout_s=90.0, budget_s=540.0)  # fmt: skip
        elif profile == "full":
            plans = {
                # From 25/s: on 2 shared cores the 10 ms knee, if any, lies below 50/s.
                "intent": PathPlan((10.0, 50.0), 25.0, 1.5, 14, 5.0),
                "duplicate": PathPlan((1000.0,), 10.0, 1.5, 12, 10.0),
            }
        elif profile == "emulated":
            # An emulated H200 answers a 32-row batch in 0.4 ms: the knee is the host's, in the
            # hundreds to thousands per second; one failed step does not end the ramp.
            plans = {
                "intent": PathPlan((10.0, 50.0), 100.0, 1.6, 10, 3.0),
                "duplicate": PathPlan((1000.0,), 100.0, 1.6, 8, 5.0),
            }
            base = dict(step_s=8.0, refine_steps=0, model_only_budget_s=0.5,
                        ready_timeout_s=90.0, patience=1, emulate="h200")  # fmt: skip
        elif profile == "gpu":
            plans = {
                "intent": PathPlan((10.0, 50.0), 200.0, 2.0, 7, 3.0),
                "duplicate": PathPlan((1000.0,), 100.0, 2.0, 6, 5.0),
            }
            base = dict(step_s=5.0, refine_steps=0, model_only_budget_s=0.5,
                        ready_timeout_s=120.0, routes=("intent",), budget_s=420.0)  # fmt: skip
        else:
            raise ValueError(f"unknown profile {profile!r}: quick, full, emulated or gpu")
        base.update(overrides)
        return cls(artifact=artifact, out_dir=out_dir, plans=plans, profile=profile, **base)


# --------------------------------------------------------------------------- topics


async def create_topics(
    bootstrap: str,
    names: list[str],
    partitions: int,
    log_append: set[str],
    client_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Create fresh topics; result and source topics get LogAppendTime (timestamp = broker
    append: a result's is its acknowledgement, a source record's splits the service's "to broker"
    from its "fetch" in the tail attribution).
    `client_kwargs`: the cluster's connection arguments (`cluster_client_kwargs`)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **(client_kwargs or {})})
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    n,
                    partitions,
                    1,
                    topic_configs={"message.timestamp.type": "LogAppendTime"}
                    if n in log_append
                    else {},
                )
                for n in names
            ]
        )
    finally:
        await admin.close()


async def delete_topics(
    bootstrap: str, names: list[str], client_kwargs: Mapping[str, Any] | None = None
) -> None:
    """Best-effort clean-up so an external cluster does not collect benchmark topics."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **(client_kwargs or {})})
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(names)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- contenders


@dataclass
class Topics:
    """The fresh topics of one (contender, route) run."""

    source: str
    results: str
    dlq: str
    other_source: str
    other_results: str

    @classmethod
    def fresh(cls, run_id: str, contender: str, route: str) -> Topics:
        """Unique names per run so no old record can leak into a measurement."""
        p = f"bench.{run_id}.{contender}.{route}"
        return cls(f"{p}.in", f"{p}.out", f"{p}.dlq", f"{p}.in2", f"{p}.out2")

    def all(self) -> list[str]:
        """Every topic to create (the service wants all five even when serving one route)."""
        return [self.source, self.results, self.dlq, self.other_source, self.other_results]


def service_argv(*, other_tree: bool = False) -> list[str]:
    """`python -m streamer run`; with -P (3.11+) when the service runs another source tree from
    PYTHONPATH: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH,
    so the service would silently import this tree instead."""
    return [sys.executable, *(["-P"] if other_tree else []), "-m", "streamer", "run"]


def contender_command(
    name: str, cfg: BenchConfig, bootstrap: str, route: str, topics: Topics, group: str
) -> tuple[list[str], dict[str, str], int | None]:
    """argv, environment and (for streamer) metrics port of a Kafka contender.

    Every contender builds its clients from the service's settings (`client_kwargs`), so on an
    external cluster it takes this shell's `STREAMER_*` TLS and SASL settings from the
    environment it inherits. The local broker the bench starts is plaintext: there they are
    left out, or a shell with a secured cluster's settings sourced would break every contender.
    """
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if external_bootstrap(cfg) is None:
        from streamer.kafka.security import security_env_names

        for key in security_env_names():
            env.pop(key, None)
    if name == "streamer" or name.removeprefix("streamer-") in cfg.variants:
        port = free_port()
        intent = route == "intent"
        env.update(
            {
                "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
                "STREAMER_ARTIFACT": str(cfg.artifact),
                "STREAMER_GROUP_ID": group,
                "STREAMER_TOPIC_QUERIES": topics.source if intent else topics.other_source,
                "STREAMER_TOPIC_PAIRS": topics.other_source if intent else topics.source,
                "STREAMER_TOPIC_INTENTS": topics.results if intent else topics.other_results,
                "STREAMER_TOPIC_DUPLICATES": topics.other_results if intent else topics.results,
                "STREAMER_TOPIC_DLQ": topics.dlq,
                "STREAMER_ROUTES": route,
                # The name before 0.2, for a variant that runs an older source tree.
                "STREAMER_PATHS": route,
                "STREAMER_METRICS_PORT": str(port),
                "STREAMER_FORCE_ARTIFACT": "true" if cfg.force_artifact else "false",
            }
        )
        if cfg.emulate:
            env["STREAMER_EMULATE"] = cfg.emulate
        variant = cfg.variants.get(name.removeprefix("streamer-"), {})
        env.update(variant)
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        return service_argv(other_tree="PYTHONPATH" in variant), env, port
    module = {"naive": "naive", "peer": "peer", "passthrough": "passthrough"}[name]
    argv = [
        sys.executable,
        "-m",
        f"streamer.bench.contenders.{module}",
        "--bootstrap",
        bootstrap,
        "--in-topic",
        topics.source,
        "--out-topic",
        topics.results,
        "--group",
        group,
        "--artifact",
        str(cfg.artifact),
        "--route",
        route,
    ]
    if cfg.force_artifact:
        argv.append("--force-artifact")
    if cfg.emulate:
        argv += ["--emulate", cfg.emulate]
    return argv, env, None


_LIVE_GROUPS: set[int] = set()
"""Process groups of contenders started and not yet stopped (they run in their own session,
so a Ctrl-C at the terminal does not reach them: the harness must stop them itself)."""


def kill_live_contenders(grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every contender still running; for interrupted runs."""
    groups = sorted(_LIVE_GROUPS)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pgid in groups:
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    _LIVE_GROUPS.clear()
    return groups


class Contender:
    """A running contender subprocess: readiness, CPU meter, stop."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        metrics_port: int | None,
        log_path: Path,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.metrics_port = metrics_port
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.meter: CpuMeter | None = None
        self._stdout_task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float) -> str | None:
        """Start and wait for readiness; returns None when ready, else why it is not."""
        log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        _LIVE_GROUPS.add(self.proc.pid)
        log.close()
        self.meter = CpuMeter(self.proc.pid)
        deadline = time.monotonic() + timeout_s
        if self.metrics_port is None:
            assert self.proc.stdout is not None
            while time.monotonic() < deadline:
                try:
                    line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=1.0)
                except TimeoutError:
                    continue
                if not line:
                    break  # stdout closed: the process is exiting
                # endswith: faust prefixes terminal control codes to the first line it prints
                if line.rstrip().endswith(b"READY"):
                    # keep reading stdout so a chatty contender never blocks on a full pipe
                    self._stdout_task = asyncio.create_task(self._drain_stdout())
                    return None
        else:
            while time.monotonic() < deadline and self.proc.returncode is None:
                if await asyncio.to_thread(http_ready, self.metrics_port):
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), timeout=0.5)
        with contextlib.suppress(TimeoutError):  # closed stdout: let it finish exiting
            await asyncio.wait_for(self.proc.wait(), timeout=5.0)
        code = self.proc.returncode
        await self.stop()
        why = (
            f"exited with code {code}" if code is not None else f"not ready after {timeout_s:.0f}s"
        )
        return f"{why}; last log lines: {self.log_tail()}"

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.returncode is None

    def log_tail(self, lines: int = 8) -> str:
        """The end of the contender's stderr, for skip reasons."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (drain), then SIGKILL of the whole process group."""
        if self.proc is None or self.proc.returncode is not None:
            if self.proc is not None:
                _LIVE_GROUPS.discard(self.proc.pid)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        _LIVE_GROUPS.discard(self.proc.pid)


# --------------------------------------------------------------------------- steps


async def measure_step(
    cfg: BenchConfig,
    bootstrap: str,
    topics: Topics,
    factory: EventFactory,
    sink: Sink,
    contender: Contender,
    broker: CpuMeter | None,
    rate: float,
    duration_s: float,
    drain_s: float,
    seed: int,
    client_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One fixed-rate open-loop step: send, wait for results, account latency and CPU.
    `client_kwargs`: the cluster's connection arguments (`cluster_client_kwargs`)."""
    scheduled: dict[str, int] = {}
    sink.recorder = LatencyRecorder(scheduled)
    before = scrape_text(contender.metrics_port) if contender.metrics_port else None
    cpu0 = contender.meter.sample() if contender.meter else 0.0
    bro0 = broker.sample() if broker else 0.0
    offsets = schedule(rate, duration_s, cfg.arrival, seed)

    load = await run_load(
        bootstrap,
        topics.source,
        offsets,
        factory,
        offered_rate=rate,
        run_tag=new_run_tag(),
        seed=seed,
        scheduled_ms=scheduled,
        client_kwargs=client_kwargs,
    )
    await sink.wait_complete(drain_s)
    report = sink.recorder.report()
    cpu = (contender.meter.sample() if contender.meter else 0.0) - cpu0
    bro = (broker.sample() if broker else 0.0) - bro0
    after = scrape_text(contender.metrics_port) if contender.metrics_port else None
    events = max(report.unique, 1)
    step: dict[str, Any] = {
        "offered_rate": rate,
        "load": load.summary(),
        "sink": report.as_dict(),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1k": round(cpu / events * 1000, 4),
        "broker_cpu_s": round(bro, 3),
        "broker_cpu_s_per_1k": round(bro / events * 1000, 4) if broker else None,
        "contender_alive": contender.alive(),
    }
    if contender.env.get("STREAMER_DELIVERY") == "exactly-once":
        # Its results count once their transaction commits: judge it by when the
        # read_committed sink saw them (`report.step_clock`), not by the append time.
        step["clock"] = "observed"
    if before is not None and after is not None:
        step["stages"] = [
            s.__dict__ for s in stage_deltas(parse_stages(before), parse_stages(after))
        ]
        # Where the slowest events of the step spent their time, and a uniform sample's.
        tail = tail_deltas(parse_tail(before), parse_tail(after))
        if tail:
            step["tail"] = [t.as_dict() for t in tail]
        gc_passes = stage_deltas(
            parse_stages(before, GC_METRIC, "generation"),
            parse_stages(after, GC_METRIC, "generation"),
        )
        if gc_passes:  # per generation: passes, mean ms, upper-bound P99 ms
            step["gc"] = [s.__dict__ for s in gc_passes]
    return step


def outcome_of(step: dict[str, Any]) -> StepOutcome:
    """The knee-search view of a step: P99 to broker acknowledgement, missing, generator slip.

    A step with `clock` "observed" (an exactly-once contender) is judged by when the sink saw
    the result: its broker append time is when it entered a transaction, not when a
    read_committed consumer could read it.
    """
    sink = step["sink"]
    p99 = sink["broker"]["p99_ms"]
    if sink["broker"]["count"] == 0 or step.get("clock") == "observed":
        p99 = sink["observed"]["p99_ms"]
    missing = sink["missing"] + (0 if step["contender_alive"] else 1)
    return StepOutcome(step["offered_rate"], p99, missing, step["load"]["fell_behind"])


async def run_contender_path(
    cfg: BenchConfig,
    run_id: str,
    bootstrap: str,
    broker_pid: int | None,
    name: str,
    route: str,
    log_dir: Path,
    say: Any,
    deadline: float = float("inf"),
    client_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Knee search of one contender on one route; never raises for a contender's failure.

    `deadline` (time.monotonic()) ends the ramp early, recorded as `stopped_by_budget`.
    `client_kwargs`: the cluster's connection arguments (`cluster_client_kwargs`).
    """
    plan = cfg.plans[route]
    topics = Topics.fresh(run_id, name, route)
    group = f"bench-{run_id}-{name}-{route}"
    result: dict[str, Any] = {
        "contender": name,
        "route": route,
        "targets_ms": list(plan.targets_ms),
        "steps": [],
        "status": "ok",
    }
    if time.monotonic() + cfg.step_s + plan.drain_s > deadline:
        result.update(status="skipped", reason="time budget spent before it could start")
        say(f"  {name}/{route}: SKIPPED (time budget spent)")
        return result
    await create_topics(
        bootstrap, topics.all(), cfg.partitions, {topics.results, topics.source}, client_kwargs
    )
    argv, env, port = contender_command(name, cfg, bootstrap, route, topics, group)
    contender = Contender(name, argv, env, port, log_dir / f"{name}-{route}.log")
    # Results of an exactly-once contender count once their transaction commits: its sink reads
    # read_committed (every sink does: on topics written without transactions it changes
    # nothing, the last stable offset is the high watermark there).
    sink = Sink(
        bootstrap, topics.results, isolation_level="read_committed", client_kwargs=client_kwargs
    )
    try:
        t0 = time.monotonic()
        why = await contender.start(cfg.ready_timeout_s)
        if why is not None:
            result.update(status="skipped", reason=f"{name} failed to start: {why}")
            say(f"  {name}/{route}: SKIPPED ({result['reason'][:300]})")
            return result
        result["startup_s"] = round(time.monotonic() - t0, 2)
        await sink.start()
        factory = EventFactory(ROUTE_KIND[route], cfg.data_root)
        broker = CpuMeter(broker_pid) if broker_pid else None
        # Unmeasured, at the first measured rate: the first step must meet a warm service.
        warm_rate, warm_s = warmup_plan(plan.start_rate, cfg.warmup_s)
        warm = await measure_step(
            cfg,
            bootstrap,
            topics,
            factory,
            sink,
            contender,
            broker,
            warm_rate,
            warm_s,
            plan.drain_s,
            1,
            client_kwargs,
        )
        result["warmup"] = {
            "offered_rate": warm["offered_rate"],
            "duration_s": warm_s,
            "sink": warm["sink"],
        }
        search = KneeSearch(
            plan.targets_ms,
            plan.start_rate,
            plan.growth,
            refine_steps=cfg.refine_steps,
            max_steps=plan.max_steps,
            patience=cfg.patience,
        )
        seed = 2
        while (rate := search.next_rate()) is not None:
            if time.monotonic() + cfg.step_s + plan.drain_s > deadline:
                result["stopped_by_budget"] = True
                say(f"  {name}/{route}: time budget spent, ramp stopped at {rate:.1f}/s")
                break
            retake = search.retaking
            step = await measure_step(
                cfg,
                bootstrap,
                topics,
                factory,
                sink,
                contender,
                broker,
                rate,
                cfg.step_s,
                plan.drain_s,
                seed,
                client_kwargs,
            )
            seed += 1
            out = outcome_of(step)
            step["meets"] = {str(t): out.meets(t) for t in plan.targets_ms}
            if retake:  # the failed first step, measured again: this one counts instead
                step["retake"] = True
                result["steps"][0]["superseded"] = True
            result["steps"].append(step)
            search.record(out)
            s = step["sink"]
            c = step_clock(step)
            say(
                f"  {name}/{route} @ {rate:8.1f}/s{' (retake)' if retake else ''}: p50 {c['p50_ms']:8.2f} ms  "
                f"p99 {c['p99_ms']:8.2f} ms  max {c['max_ms']:8.1f} ms  "
                f"n={s['unique']} missing={s['missing']} dup={s['duplicates']}  "
                f"cpu {step['cpu_s_per_1k']:.2f} s/1k"
            )
            if not contender.alive():
                result.update(status="crashed", reason=f"{name} died: {contender.log_tail()}")
                break
        result["max_sustained"] = {str(t): search.max_sustained(t) for t in plan.targets_ms}
    except Exception as exc:  # a broken contender or broker must not lose the other results
        result.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        say(f"  {name}/{route}: ERROR {result['reason']}")
    finally:
        await sink.stop()
        await contender.stop()
        await delete_topics(bootstrap, topics.all(), client_kwargs)
    return result


def run_model_only(cfg: BenchConfig, route: str, log_dir: Path) -> dict[str, Any]:
    """The model alone per bucket, as a subprocess; CPU from the reaped child's rusage."""
    argv = [
        sys.executable,
        "-m",
        "streamer.bench.contenders.model_only",
        "--artifact",
        str(cfg.artifact),
        "--route",
        route,
        "--budget-s",
        str(cfg.model_only_budget_s),
        # The bench's own event mix: with one thread (a cpu worker of the service on this
        # machine) and with every core (the machine's ceiling).
        "--mix-threads",
        ",".join(str(t) for t in sorted({1, os.cpu_count() or 1})),
    ]
    if cfg.force_artifact:
        argv.append("--force-artifact")
    if cfg.emulate:
        argv += ["--emulate", cfg.emulate]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with (log_dir / f"model-only-{route}.log").open("wb") as log:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, timeout=600, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [
        orjson.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith(b"{")
    ]
    rows = [r for r in lines if r.get("kind") != "mix"]
    mix = [r for r in lines if r.get("kind") == "mix"]
    if proc.returncode != 0 or not rows:
        tail = (log_dir / f"model-only-{route}.log").read_text(errors="replace").splitlines()[-5:]
        return {
            "contender": "model-only",
            "route": route,
            "status": "skipped",
            "reason": f"exited with code {proc.returncode}: {' | '.join(tail)}",
        }
    items = sum(r["iters"] * r["batch"] for r in rows) + sum(r["events"] * r["passes"] for r in mix)
    return {
        "contender": "model-only",
        "route": route,
        "status": "ok",
        "buckets": rows,
        "mix": mix,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1k": round(cpu / max(items, 1) * 1000, 4),
        "best_items_per_s": max(r["items_per_s"] for r in rows),
    }


# --------------------------------------------------------------------------- the run


def external_bootstrap(cfg: BenchConfig) -> str | None:
    """The external cluster's address (`--bootstrap`, else KAFKA_BOOTSTRAP_SERVERS); None: the
    bench starts a local broker of its own."""
    return cfg.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None


def cluster_client_kwargs(cfg: BenchConfig) -> dict[str, Any]:
    """Connection arguments of the bench's admin, load generator and sinks: on an external
    cluster the service's own (`client_kwargs` of its settings: `STREAMER_*` TLS and SASL) with
    the cluster's address; none for the plaintext local broker. Invalid settings raise
    (pydantic's ValidationError, SecurityConfigError) before anything starts."""
    external = external_bootstrap(cfg)
    if external is None:
        return {}
    from streamer.config import load_settings
    from streamer.kafka.clients import client_kwargs

    return client_kwargs(load_settings(bootstrap_servers=external))


@contextlib.contextmanager
def broker_for(cfg: BenchConfig, say: Any) -> Any:
    """The configured cluster, else a local Apache Kafka started (and stopped) for this run."""
    external = external_bootstrap(cfg)
    if external:
        port = int(external.split(",")[0].rsplit(":", 1)[1])
        pid = listening_pid(port)  # metered only when the broker runs on this machine
        yield external, pid, {"kind": "external", "bootstrap": external, "local_pid": pid}
        return
    from streamer.kafka.local_broker import LocalKafka

    say("starting a local Apache Kafka ...")
    with LocalKafka() as kafka:
        yield (
            kafka.bootstrap_servers,
            kafka.pid,
            {"kind": "local Apache Kafka (KRaft)", "version": kafka.version},
        )


def run_meta(cfg: BenchConfig, argv: list[str]) -> dict[str, Any]:
    """Who, where, what: every number in the report must be traceable to this."""
    import platform

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parent,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    manifest: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        manifest = orjson.loads((cfg.artifact / "manifest.json").read_bytes())
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(argv),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "machine": {
            "cpu": cpu_model,
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "artifact": {
            "path": str(cfg.artifact),
            "model_name": (manifest.get("model") or {}).get("name"),
            "model_version": (manifest.get("model") or {}).get("version"),
            "target": manifest.get("target"),
        },
        # Every contender ran on this EMULATED device, not the model (None: the real model).
        "emulated_device": cfg.emulate,
        "profile": cfg.profile,
        "step_s": cfg.step_s,
        "arrival": cfg.arrival,
        "partitions": cfg.partitions,
        "plans": {k: v.__dict__ for k, v in cfg.plans.items()},
    }


async def run_bench(cfg: BenchConfig, argv: list[str], say: Any = print) -> dict[str, Any]:
    """The whole benchmark; returns (and writes) the results document."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = cfg.out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    deadline = time.monotonic() + (cfg.budget_s if cfg.budget_s is not None else float("inf"))
    results: dict[str, Any] = {"meta": run_meta(cfg, argv), "runs": []}
    client_kwargs = cluster_client_kwargs(cfg)  # before anything runs: settings errors first
    for route in cfg.routes:
        if "model-only" in cfg.contenders:
            say(f"model-only/{route} ...")
            r = await asyncio.to_thread(run_model_only, cfg, route, log_dir)
            results["runs"].append(r)
            say(f"  model-only/{route}: {r['status']} {r.get('reason', '')}")
    kafka_contenders = [c for c in cfg.contenders if c in KAFKA_CONTENDERS]
    kafka_contenders += [f"streamer-{label}" for label in cfg.variants]
    if kafka_contenders:
        with broker_for(cfg, say) as (bootstrap, broker_pid, broker_meta):
            results["meta"]["broker"] = broker_meta
            todo = [(route, name) for route in cfg.routes for name in kafka_contenders]
            for i, (route, name) in enumerate(todo):
                # an even share of what is left, so the last contender is not starved
                share = time.monotonic() + (deadline - time.monotonic()) / (len(todo) - i)
                say(f"{name}/{route} ...")
                results["runs"].append(
                    await run_contender_path(
                        cfg,
                        run_id,
                        bootstrap,
                        broker_pid,
                        name,
                        route,
                        log_dir,
                        say,
                        share,
                        client_kwargs,
                    )
                )
    (cfg.out_dir / "results.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    return results
