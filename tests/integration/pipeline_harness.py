"""Test harness for the service: topics, a service subprocess, producing events, collecting results.

The service runs as a real `python -m streamer run` process (with its real worker processes),
so SIGKILL/SIGTERM tests exercise exactly what operators do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamer.kafka.local_broker import free_port
from streamer.kafka.topics import ensure_topics
from streamer.records.types import DEAD_LETTER_SCHEMA

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Topics:
    """The five topics of one test, uniquely named."""

    queries: str
    pairs: str
    intents: str
    duplicates: str
    dlq: str

    def env(self) -> dict[str, str]:
        """Service environment naming these topics."""
        return {
            "STREAMER_TOPIC_QUERIES": self.queries,
            "STREAMER_TOPIC_PAIRS": self.pairs,
            "STREAMER_TOPIC_INTENTS": self.intents,
            "STREAMER_TOPIC_DUPLICATES": self.duplicates,
            "STREAMER_TOPIC_DLQ": self.dlq,
        }


async def create_topics(
    bootstrap: str,
    partitions: int = 4,
    client_kwargs: dict[str, Any] | None = None,
    prefix: str = "t-",
) -> Topics:
    """Create a fresh set of the five topics (random suffix) and return their names.

    `client_kwargs`: security settings for a secured broker (an admin's).
    """
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(
        queries=f"{prefix}queries-{suffix}",
        pairs=f"{prefix}pairs-{suffix}",
        intents=f"{prefix}intents-{suffix}",
        duplicates=f"{prefix}dups-{suffix}",
        dlq=f"{prefix}dlq-{suffix}",
    )
    names = (topics.queries, topics.pairs, topics.intents, topics.duplicates, topics.dlq)
    await ensure_topics(bootstrap, dict.fromkeys(names, partitions), client_kwargs=client_kwargs)
    return topics


@dataclass
class ServiceProcess:
    """A `streamer run` subprocess with its log file and metrics port."""

    bootstrap: str
    artifact: Path
    topics: Topics
    log_path: Path
    group_id: str = "streamer-test"
    routes: str = "intent,duplicate"
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0

    def start(self) -> ServiceProcess:
        """Launch the service; returns once /readyz answers 200 (or raises with the log)."""
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.http("/readyz")[0] == 200:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"service not ready in 90 s:\n{self.log_tail()}")

    def launch(self) -> ServiceProcess:
        """Start the process without waiting for readiness (tests of start-up failures)."""
        self.metrics_port = free_port()
        env = dict(os.environ)
        env.update(self.topics.env())
        env.update(
            {
                "STREAMER_BOOTSTRAP_SERVERS": self.bootstrap,
                "STREAMER_ARTIFACT": str(self.artifact),
                "STREAMER_GROUP_ID": self.group_id,
                "STREAMER_ROUTES": self.routes,
                "STREAMER_METRICS_PORT": str(self.metrics_port),
                # The worker-process path (shared memory, supervisor, restarts): what every
                # accelerator runs and what the fault tests kill. The cpu default runs the model
                # in process instead; test_pipeline.py's `test_in_process_default_*` cover it.
                "STREAMER_EXECUTOR": "multiproc",
                "STREAMER_WORKERS": "1",
                "STREAMER_THREADS_PER_WORKER": "1",
                "STREAMER_DRAIN_TIMEOUT_S": "20",
                # The tiny random model's int8 variant fails the parity gate by design of the
                # gate (random weights, near-uniform scores); fp32 is the variant that passes.
                "STREAMER_VARIANT": "fp32",
                "PYTHONPATH": str(REPO),
                "HF_HUB_OFFLINE": "1",
            }
        )
        env.update(self.extra_env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run"], env=env, stdout=log, stderr=log, cwd=REPO
        )
        return self

    def http(self, path: str) -> tuple[int, str]:
        """GET a path of the service's HTTP endpoint; (0, '') when it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2
            ) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except OSError:
            return 0, ""

    def metric(self, name: str) -> float:
        """Sum of all samples of one metric (0 when absent)."""
        _, text = self.http("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def worker_pids(self) -> list[int]:
        """PIDs of the service's worker processes (its children, minus helpers)."""
        assert self.proc is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and b"resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return pids

    def signal(self, sig: int) -> None:
        """Send a signal to the service's main process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit; returns the exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Best-effort teardown: SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def query_event(event_id: str, text: str) -> bytes:
    """A valid query event."""
    return orjson.dumps({"event_id": event_id, "query": text, "ts_ms": int(time.time() * 1000)})


def pair_event(event_id: str, i: int) -> bytes:
    """A valid product-pair event."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "ts_ms": int(time.time() * 1000),
            "left": {"id": f"B{i:09d}", "title": f"usb c cable {i % 17} ft", "brand": "anker",
                     "price": 9.99},
            "right": {"id": f"C{i:09d}", "title": f"anker usb-c cable {i % 13} feet",
                      "description": "braided nylon", "price": None},
        }
    )  # fmt: skip


QUERIES = [
    "wireless earbuds", "where is my order", "the mentalist season 3", "queen duvet cover white",
    "how do i return an item", "kindle paperwhite", "harry potter audiobook", "cancel my order",
    "running shoes men size 11", "gift card balance", "coffee table with storage", "4k tv 55 inch",
]  # fmt: skip


async def produce(
    bootstrap: str,
    topic: str,
    values: list[tuple[bytes | None, bytes]],
    rate: float | None = None,
    client_kwargs: dict[str, Any] | None = None,
) -> None:
    """Send (key, value) records, optionally paced at `rate` per second; waits for all acks."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, **(client_kwargs or {})
    )
    await producer.start()
    try:
        start = time.monotonic()
        futures = []
        for i, (key, value) in enumerate(values):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def collect(
    bootstrap: str,
    topic: str,
    expected_ids: set[str],
    timeout_s: float,
    settle_s: float = 1.0,
    client_kwargs: dict[str, Any] | None = None,
    isolation_level: str = "read_uncommitted",
) -> Counter[str]:
    """Read a results topic from the start until every expected id was seen (or timeout).

    Returns a Counter of event ids (so duplicates are visible). After all ids are seen it keeps
    reading `settle_s` longer so late duplicates are counted too. `isolation_level`
    "read_committed" reads what a downstream of exactly-once delivery may see: no record of an
    aborted or still open transaction.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None, fetch_max_wait_ms=50, isolation_level=isolation_level,
        **(client_kwargs or {}),
    )  # fmt: skip
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + timeout_s
        complete_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batch.values():
                for msg in messages:
                    seen[orjson.loads(msg.value)["event_id"]] += 1
            if complete_at is None and expected_ids <= seen.keys():
                complete_at = time.monotonic()
            if complete_at is not None and time.monotonic() - complete_at >= settle_s:
                break
    finally:
        await consumer.stop()
    return seen


async def read_all(
    bootstrap: str,
    topic: str,
    timeout_s: float = 5.0,
    client_kwargs: dict[str, Any] | None = None,
    isolation_level: str = "read_uncommitted",
) -> list[dict]:
    """Every record currently in a topic (of committed transactions only: read_committed),
    decoded."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None, fetch_max_wait_ms=50, isolation_level=isolation_level,
        **(client_kwargs or {}),
    )  # fmt: skip
    await consumer.start()
    out = []
    try:
        deadline = time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - idle_since < 1.5:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for msg in messages:
                    out.append(orjson.loads(msg.value))
                    idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return out


def shm_leftovers(prefix: str = "streamer") -> list[str]:
    """Shared-memory segments of ours still present in /dev/shm."""
    return sorted(p.name for p in Path("/dev/shm").glob(f"{prefix}*"))


def assert_dead_letter_shape(letter: dict) -> None:
    """A DLQ record names its code, a reason and the source coordinates."""
    assert letter["schema"] == DEAD_LETTER_SCHEMA
    assert letter["error_code"] and letter["reason"]
    assert isinstance(letter["source_offset"], int)
    assert isinstance(letter["source_partition"], int)


def fake_runner_service(
    bootstrap: str, artifact: Path, topics: Topics, *, sleep_s: float, **overrides: object
) -> Any:
    """An in-process Service on the intent route whose worker runs a fake runner sleeping
    `sleep_s` per batch: real Kafka, real worker process, state inspectable by the test."""
    from streamer.app import assemble, batch_policies, target_rates
    from streamer.config import load_settings
    from streamer.kafka.clients import make_consumer, make_producer
    from streamer.model.manifest import served_meta
    from streamer.model.tokenize import Encoder
    from streamer.pipeline.executor import MultiprocExecutor, RunnerSpec
    from streamer.pipeline.routes import make_routes

    settings = load_settings(
        bootstrap_servers=bootstrap, routes="intent", metrics_port=0,
        topic_queries=topics.queries, topic_pairs=topics.pairs, topic_intents=topics.intents,
        topic_duplicates=topics.duplicates, topic_dlq=topics.dlq, **overrides,
    )  # fmt: skip
    settings = settings.model_copy(update=target_rates("cpu", settings))
    model = served_meta(artifact, variant="fp32")
    n_labels = len(model.labels)
    executor = MultiprocExecutor(
        RunnerSpec(
            "tests.fakes:make_fake_runner",
            {"n_outputs": n_labels, "sleep_s": sleep_s, "zero": True},
        ),
        workers=1,
        threads_per_worker=1,
        slots_per_worker=2,
        max_batch=max(b.max_batch for b in model.buckets.values()),
        max_seq_len=max(b.max_seq_len for b in model.buckets.values()),
        max_outputs=n_labels,
        heartbeat_timeout_s=max(10.0, 4 * sleep_s),
    )
    return assemble(
        settings,
        make_routes(settings, model, Encoder.from_artifact(artifact)),
        executor,
        batch_policies("cpu", settings, model.buckets),
        producer=make_producer(settings),
        consumer=make_consumer(settings),
    )
