"""Downstream consumer of a results topic: end-to-end latency, duplicates and missing results.

Latency is measured from each event's *scheduled* time (set by the open-loop generator) to two
points: the result record's broker timestamp (the service's produce time, i.e. when the result
was handed to Kafka) and the moment this consumer saw it (what a downstream ranking service
experiences). Both go into HdrHistograms so P99.9 and max are exact to 3 significant digits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram

# Field names a result record may carry its source timestamp under (used only when the
# sink was not told the schedule, e.g. `streamer tail`).
SOURCE_TS_FIELDS = ("source_ts_ms", "source_timestamp_ms", "event_ts_ms", "ts_ms")
_MAX_US = 3_600_000_000  # one hour in microseconds: anything slower is recorded as one hour


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one latency histogram, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def from_histogram(cls, h: HdrHistogram) -> LatencyStats:
        """Read the standard percentiles out of a microsecond histogram.

        Each value is its bucket's lower edge: at 3 significant digits a bucket spans 0.1% of
        its value, and the broker-side latencies are whole milliseconds (both timestamps are
        ms), which the lower edge reproduces exactly. HdrHistogram's default (the upper edge)
        would read a P99 of exactly 10 ms as 10.007 ms and fail a 10 ms target.
        """
        if h.get_total_count() == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan)

        def at(percentile: float) -> float:
            return h.get_lowest_equivalent_value(h.get_value_at_percentile(percentile)) / 1000.0

        return cls(
            count=int(h.get_total_count()),
            p50_ms=at(50.0),
            p90_ms=at(90.0),
            p99_ms=at(99.0),
            p999_ms=at(99.9),
            max_ms=h.get_lowest_equivalent_value(h.get_max_value()) / 1000.0,
            mean_ms=h.get_mean_value() / 1000.0,
        )


@dataclass(frozen=True)
class SinkReport:
    """Everything the sink learned about one measurement window."""

    expected: int
    received: int
    unique: int
    duplicates: int
    missing: int
    unknown: int
    clock_skewed: int
    create_time_stamped: int
    """Results whose broker timestamp is the producer's CreateTime, not the broker's append time
    (a broker that ignores `message.timestamp.type=LogAppendTime`, e.g. Tansu)."""
    observed: LatencyStats
    broker: LatencyStats
    first_result_ms: int | None
    last_result_ms: int | None

    @property
    def throughput(self) -> float:
        """Unique results per second between the first and the last one seen."""
        if self.first_result_ms is None or self.last_result_ms is None:
            return 0.0
        span = (self.last_result_ms - self.first_result_ms) / 1000.0
        return self.unique / span if span > 0 else float(self.unique)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["throughput"] = self.throughput
        return d


def latency_us(scheduled_ms: int, at_ms: float) -> tuple[int, bool]:
    """Latency in microseconds for the histogram (>= 1), and whether the clock went backwards."""
    delta = (at_ms - scheduled_ms) * 1000.0
    if delta < 0:
        return 1, True
    return min(max(1, round(delta)), _MAX_US), False


class LatencyRecorder:
    """Pure bookkeeping of one window: which ids came back, how late, how many times."""

    def __init__(self, scheduled_ms: Mapping[str, int] | None = None) -> None:
        self.scheduled_ms: Mapping[str, int] = {} if scheduled_ms is None else scheduled_ms
        self.strict = scheduled_ms is not None
        self.seen: dict[str, int] = {}
        self.observed = HdrHistogram(1, _MAX_US, 3)
        self.broker = HdrHistogram(1, _MAX_US, 3)
        self.unknown = 0
        self.clock_skewed = 0
        self.create_time_stamped = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def observe(
        self,
        event_id: str,
        observed_ms: float,
        broker_ts_ms: int | None,
        source_ts_ms: int | None = None,
        log_append_time: bool = True,
    ) -> None:
        """Account one result record; only the first copy of an id counts towards latency."""
        sched = self.scheduled_ms.get(event_id)
        if sched is None:
            if self.strict or source_ts_ms is None:
                self.unknown += 1  # a stale result of an earlier window, or not ours
                return
            sched = source_ts_ms
        n = self.seen.get(event_id, 0)
        self.seen[event_id] = n + 1
        if n:
            return
        us, skew = latency_us(sched, observed_ms)
        self.observed.record_value(us)
        self.clock_skewed += skew
        if broker_ts_ms is not None:
            self.create_time_stamped += not log_append_time
            us, skew = latency_us(sched, broker_ts_ms)
            self.broker.record_value(us)
            self.clock_skewed += skew
        obs = int(observed_ms)
        self.first_ms = obs if self.first_ms is None else min(self.first_ms, obs)
        self.last_ms = obs if self.last_ms is None else max(self.last_ms, obs)

    def missing_ids(self) -> list[str]:
        """Expected ids with no result yet."""
        return [i for i in self.scheduled_ms if i not in self.seen]

    @property
    def complete(self) -> bool:
        """Every expected id has at least one result."""
        return len(self.seen) >= len(self.scheduled_ms) and not self.missing_ids()

    def report(self) -> SinkReport:
        """Freeze the window into a report."""
        received = sum(self.seen.values())
        return SinkReport(
            expected=len(self.scheduled_ms),
            received=received,
            unique=len(self.seen),
            duplicates=received - len(self.seen),
            missing=len(self.missing_ids()) if self.strict else 0,
            unknown=self.unknown,
            clock_skewed=self.clock_skewed,
            create_time_stamped=self.create_time_stamped,
            observed=LatencyStats.from_histogram(self.observed),
            broker=LatencyStats.from_histogram(self.broker),
            first_result_ms=self.first_ms,
            last_result_ms=self.last_ms,
        )


def source_ts_from_value(value: bytes | None) -> int | None:
    """Best-effort source timestamp of a result record (for sinks that do not know the schedule)."""
    if not value:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    for name in SOURCE_TS_FIELDS:
        ts = doc.get(name)
        if isinstance(ts, int | float):
            return int(ts)
    return None


class Sink:
    """Reads a results topic from its end, feeding every record into the current recorder.

    The recorder can be swapped between measurement windows while the consumer keeps running,
    so a stepped benchmark does not pay a consumer start per step.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        fetch_max_wait_ms: int = 5,
        isolation_level: str = "read_committed",
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        # The cluster's connection arguments (TLS, SASL), as the load generator's.
        self.client_kwargs = dict(client_kwargs or {})
        self.topic = topic
        self.fetch_max_wait_ms = fetch_max_wait_ms
        # read_committed: what a downstream of exactly-once delivery sees (results count when
        # their transaction commits); the same as read_uncommitted on non-transactional topics.
        self.isolation_level = isolation_level
        self.recorder = LatencyRecorder({})
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, from_beginning: bool = False) -> None:
        """Assign all partitions (no group: nothing to rebalance) and start reading."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        connection = {"bootstrap_servers": self.bootstrap, **self.client_kwargs}
        c = AIOKafkaConsumer(
            **connection,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            auto_offset_reset="earliest" if from_beginning else "latest",
            isolation_level=self.isolation_level,
        )
        await c.start()
        partitions: set[int] | None = None
        for _ in range(100):  # a fresh topic's metadata may take a moment to appear
            partitions = c.partitions_for_topic(self.topic)
            if partitions:
                break
            await c._client.force_metadata_update()
            await asyncio.sleep(0.1)
        if not partitions:
            await c.stop()
            raise RuntimeError(f"topic {self.topic!r} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        c.assign(tps)
        if from_beginning:
            await c.seek_to_beginning(*tps)
        else:
            await c.seek_to_end(*tps)
            for tp in tps:  # resolve the end offsets now, so results produced next are seen
                await c.position(tp)
        self._consumer = c
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        c = self._consumer
        while True:
            batches = await c.getmany(timeout_ms=100, max_records=10_000)
            now_ms = time.time() * 1000.0
            rec = self.recorder
            for records in batches.values():
                for r in records:
                    key = r.key.decode("utf-8", "replace") if r.key else ""
                    src = None if rec.strict else source_ts_from_value(r.value)
                    # timestamp_type 1 = LogAppendTime (the broker's clock at append)
                    rec.observe(key, now_ms, r.timestamp, src, r.timestamp_type == 1)

    async def wait_complete(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until the current recorder has every expected id or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()  # surface a crashed consumer loop
            if self.recorder.complete:
                return True
            await asyncio.sleep(poll_s)
        return self.recorder.complete

    async def stop(self) -> None:
        """Stop reading and close the consumer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
