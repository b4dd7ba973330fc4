"""Where the service's CPU goes under load: a py-spy profile folded into pipeline stages.

    python -m streamer.bench.profile --route intent --rate 200 --seconds 30   (make bench-profile)

Starts a local Kafka on a free port and ``streamer run``; once the service is ready, attaches
the py-spy sampling profiler to it and (``--subprocesses``) its worker for exactly the
window in which ``streamer produce`` offers a fixed open-loop rate (start-up and model
loading are not sampled); stops the service with SIGTERM, then folds every sampled stack
into the stage that could cap throughput: Kafka client, decode/encode, tokenize,
batching and offsets, metrics, the shared-memory hop, the model, and the event loop itself.
py-spy drops idle samples by default, so the shares are of busy CPU time, per process.

py-spy is a tool, not a library of the service: it is not in the lock. Install it anywhere
(``pip install py-spy``) and pass ``--py-spy`` or put it on PATH.
Output: ``bench-results/profile-<UTC>-<route>/`` with the collapsed stacks (``stacks.txt``,
loadable in speedscope), the service's metrics after the run and ``summary.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from streamer.bench.data import REPO_ROOT
from streamer.bench.stages import ready

# First match from the innermost frame outwards decides a sample's stage.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("model / device", re.compile(r"onnxruntime|/torch/|model/runner\.py|backend_emulated\.py")),
    ("shared-memory hop", re.compile(r"shm_ring\.py|executor\.py|worker\.py|supervisor\.py")),
    ("tokenize", re.compile(r"tokenizers|tokenize\.py|serialize\.py")),
    ("decode records", re.compile(r"decode_query|decode_pair|\bdecode \(.*routes\.py")),
    ("encode results", re.compile(r"encode_\w+ \(|results \(.*routes\.py|DeadLetter")),
    ("Kafka fetch + record parsing", re.compile(r"aiokafka/consumer/fetcher|aiokafka/record/")),
    ("Kafka produce", re.compile(r"aiokafka/producer/")),
    ("Kafka commit + group", re.compile(r"group_coordinator|\bcommit \(")),
    ("Kafka client (connection, protocol)", re.compile(r"aiokafka|kafka/")),
    ("metrics", re.compile(r"prometheus_client|metrics\.py|http\.py")),
    (
        "batching, offsets, backpressure",
        re.compile(r"batcher\.py|linger\.py|offsets\.py|backpressure\.py|state\.py"),
    ),
    (
        "pipeline parts (intake, batch runner, publisher, lifecycle)",
        re.compile(r"streamer/pipeline/(intake|batch_runner|publisher|service)\.py"),
    ),
]
# Only when no frame names a stage: asyncio frames sit under most stacks (aiokafka's socket
# writes end in asyncio's StreamWriter), so they would otherwise swallow the real caller.
EVENT_LOOP = ("event loop (uvloop/asyncio internals)", re.compile(r"asyncio|uvloop|selectors"))
OTHER = "other"
_PROCESS = re.compile(r"^process (\d+):(.*)$")


def find_py_spy(given: str | None) -> str | None:
    """--py-spy, $PY_SPY, PATH, then the project's tool cache."""
    for candidate in (
        given,
        os.environ.get("PY_SPY"),
        shutil.which("py-spy"),
        str(Path.home() / ".cache/streamer/tools/bin/py-spy"),
        str(Path.home() / ".cache/streamer/tools/pyspy/bin/py-spy"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def stage_of(frames: list[str]) -> str:
    """The stage of one stack (root first): the innermost frame that names one decides;
    a stack that only shows the event loop itself is the event loop's."""
    for frame in reversed(frames):
        for name, pattern in STAGES:
            if pattern.search(frame):
                return name
    if any(EVENT_LOOP[1].search(frame) for frame in frames):
        return EVENT_LOOP[0]
    return OTHER


def fold(lines: list[str]) -> dict[str, Counter[str]]:
    """py-spy raw (collapsed) stacks -> samples per stage, per process role."""
    per_role: dict[str, Counter[str]] = {}
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # --subprocesses prefixes each stack with its process chain, root first
        # (`process 1:"cmd";process 2:"cmd";...`): the innermost one is the sampled process.
        role = "service"
        while frames and (m := _PROCESS.match(frames[0])):
            frames = frames[1:]
            role = "worker" if "spawn_main" in m.group(2) else "service"
        per_role.setdefault(role, Counter())[stage_of(frames)] += int(count)
    return per_role


def summary(
    per_role: dict[str, Counter[str]],
    title: str,
    rate_hz: int,
    seconds: float,
    events: float | None = None,
) -> str:
    """Markdown: busy CPU seconds and share per stage, per process (and µs per event if given)."""
    lines = [f"# {title}", ""]
    n_events = events or 0.0
    per_event = n_events > 0
    for role in sorted(per_role):
        samples = per_role[role]
        total = sum(samples.values())
        header = f"## {role} process: {total / rate_hz:.1f} busy CPU s sampled over {seconds:.0f} s"
        header += f" ({total / rate_hz / seconds:.0%} of one core"
        header += f"; {total / rate_hz / n_events * 1e6:.0f} µs per event)" if per_event else ")"
        lines += [header, ""]
        if per_event:
            lines += ["| stage | busy CPU s | share | µs per event |", "|---|---|---|---|"]
        else:
            lines += ["| stage | busy CPU s | share |", "|---|---|---|"]
        for name, n in samples.most_common():
            row = f"| {name} | {n / rate_hz:.2f} | {n / total:.0%} |"
            if per_event:
                row += f" {n / rate_hz / n_events * 1e6:.0f} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--route", choices=["intent", "duplicate"], default="intent")
    p.add_argument("--rate", type=float, default=200.0, help="offered events/s")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the offered load")
    p.add_argument("--sample-rate", type=int, default=100, help="py-spy samples/s")
    p.add_argument("--py-spy", help="py-spy executable")
    p.add_argument("--artifact", help="model to serve (default: the shipped one)")
    p.add_argument("--emulate", choices=["h200", "inf2"], help="serve on the EMULATED device")
    p.add_argument(
        "--service-tree",
        type=Path,
        help="run the service from another source tree (a before/after A/B of the host path)",
    )
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    py_spy = find_py_spy(a.py_spy)
    if py_spy is None:
        print(
            "py-spy not found: `pip install py-spy` anywhere, then --py-spy PATH", file=sys.stderr
        )
        return 2
    from streamer.bench.command import default_artifact
    from streamer.bench.harness import service_argv
    from streamer.kafka.local_broker import LocalKafka, free_port

    artifact = default_artifact(a.artifact)
    if artifact is None:
        print("no compiled artifact: run `make model compile-cpu`", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    out: Path = a.out or REPO_ROOT / "bench-results" / f"profile-{stamp}-{a.route}"
    out.mkdir(parents=True, exist_ok=True)
    kind, topic_key = ("query", "queries") if a.route == "intent" else ("pair", "pairs")
    port = free_port()
    with LocalKafka() as kafka:
        env = dict(os.environ)
        env.update(
            STREAMER_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
            STREAMER_ARTIFACT=str(artifact),
            STREAMER_ROUTES=a.route,
            STREAMER_METRICS_PORT=str(port),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        if a.emulate:
            env["STREAMER_EMULATE"] = a.emulate
        py = sys.executable
        subprocess.run([py, "-m", "streamer", "topics", "create"], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        from streamer.config import load_settings

        topic = getattr(load_settings(), f"topic_{topic_key}")
        stacks = out / "stacks.txt"
        with (out / "service.log").open("wb") as log:
            service_env = env
            if a.service_tree:
                service_env = {**env, "PYTHONPATH": str(a.service_tree.resolve())}
            service = subprocess.Popen(
                service_argv(other_tree=a.service_tree is not None),
                env=service_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 180
                while not ready(port):
                    if service.poll() is not None or time.monotonic() > deadline:
                        print(f"service did not become ready; see {out / 'service.log'}")
                        return 3
                    time.sleep(0.5)
                with (
                    (out / "py-spy.log").open("wb") as spy_log,
                    (out / "produce.log").open("wb") as produce_log,
                ):
                    spy = subprocess.Popen(
                        [py_spy, "record", "--pid", str(service.pid), "--subprocesses",
                         "--rate", str(a.sample_rate), "--duration", str(int(a.seconds)),
                         "--format", "raw", "--output", str(stacks)],
                        stdout=spy_log, stderr=subprocess.STDOUT,
                    )  # fmt: skip
                    subprocess.run(
                        [py, "-m", "streamer", "produce", "--topic", topic, "--kind", kind,
                         "--rate", str(a.rate), "--duration", str(a.seconds),
                         "--bootstrap", kafka.bootstrap_servers],
                        env=env, check=True, stdout=produce_log,
                    )  # fmt: skip
                    spy.wait(timeout=a.seconds + 60)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    (out / "metrics.txt").write_bytes(r.read())
            finally:
                service.send_signal(signal.SIGTERM)  # drains, commits and exits
                try:
                    service.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    service.kill()
                    service.wait()
    if not stacks.is_file():
        print(f"py-spy wrote no stacks; see {out / 'service.log'}", file=sys.stderr)
        return 1
    per_role = fold(stacks.read_text().splitlines())
    title = (
        f"CPU profile: {a.route} route at {a.rate:g}/s offered for {a.seconds:g} s "
        f"({Path(artifact).name}"
        + (f", EMULATED {a.emulate} device" if a.emulate else "")
        + (f", service from {a.service_tree}" if a.service_tree else "")
        + f", py-spy {a.sample_rate} Hz, idle samples dropped; µs per offered event)"
    )
    text = summary(per_role, title, a.sample_rate, a.seconds, events=a.rate * a.seconds)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
