"""Open-loop load generator: events go out on a fixed schedule, never paced by results.

A closed-loop generator (send, wait for the result, send the next) slows down exactly when the
system under test does, so queueing delay never shows up in the numbers ("coordinated
omission"). Here the send times are fixed before the run; each event carries its scheduled
time (`ts_ms` and the Kafka timestamp), and latency is measured from that schedule. If the
generator itself cannot keep up, it reports how far behind it fell instead of hiding it.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hdrh.histogram import HdrHistogram

Arrival = Literal["constant", "poisson"]

# The scheduled time rides in the payload and as the Kafka timestamp; latency = observed - this.
EventEncoder = Callable[[str, int, int], bytes]
"""(event_id, scheduled_ms, sequence number) -> record value."""


def schedule(
    rate: float, duration_s: float, arrival: Arrival = "constant", seed: int = 0
) -> list[float]:
    """Send offsets in seconds from the start: `rate`/s over `duration_s`, evenly or Poisson spaced."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if arrival == "constant":
        return [i / rate for i in range(math.floor(rate * duration_s))]
    if arrival == "poisson":
        rng = random.Random(seed)
        offsets: list[float] = []
        t = rng.expovariate(rate)
        while t < duration_s:
            offsets.append(t)
            t += rng.expovariate(rate)
        return offsets
    raise ValueError(f"unknown arrival process {arrival!r}")


def new_event_id(run_tag: str, seq: int) -> str:
    """Unique, sortable event id: the run's tag plus a zero-padded sequence number."""
    return f"{run_tag}-{seq:09d}"


def new_run_tag() -> str:
    """Short random tag so ids from different runs (or a retried step) never collide."""
    return uuid.uuid4().hex[:10]


@dataclass
class LoadReport:
    """What the generator actually did, next to what it was asked to do."""

    topic: str
    offered_rate: float
    duration_s: float
    scheduled: int
    sent: int
    acked: int
    failed: int
    bad: int
    started_at_ms: int
    # schedule slip: how late each send left compared with its scheduled time (ms)
    max_behind_ms: float
    p99_behind_ms: float
    # scheduled time of every good event, so the sink can compute latency and find missing ids
    scheduled_ms: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def fell_behind(self) -> bool:
        """True when the generator, not the system under test, limited the offered load.

        Slip is never hidden: latency is measured from the schedule, so a late send counts
        against the contender. Only a generator that cannot hold the rate at all (P99 slip over
        50 ms, or a stall over a second) makes the step meaningless.
        """
        return self.p99_behind_ms > 50.0 or self.max_behind_ms > 1000.0

    def summary(self) -> dict[str, object]:
        """JSON-ready summary without the per-event map."""
        return {
            "topic": self.topic,
            "offered_rate": self.offered_rate,
            "duration_s": self.duration_s,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "bad": self.bad,
            "max_behind_ms": round(self.max_behind_ms, 3),
            "p99_behind_ms": round(self.p99_behind_ms, 3),
            "fell_behind": self.fell_behind,
        }


# Time budgeted per event for encoding the whole schedule before its first send.
ENCODE_ALLOWANCE_S = 50e-6


def bad_record_plan(n: int, fraction: float, seed: int) -> set[int]:
    """Which sequence numbers carry a malformed record instead of a good one."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("bad fraction must be in [0, 1]")
    rng = random.Random(seed ^ 0x5EED)
    return {i for i in range(n) if rng.random() < fraction}


def producer_config() -> dict[str, object]:
    """aiokafka producer settings: no linger, so the schedule, not batching, sets send times.

    linger 0 sends each event as soon as the producer's sender task runs (events that pile
    up while a request is in flight still go as one batch). A 1 ms linger here added up to
    1 ms to every contender's measured latency that no contender could remove.
    """
    return {
        "linger_ms": 0,
        "max_batch_size": 256 * 1024,
        "acks": 1,
        "enable_idempotence": False,
        "request_timeout_ms": 30_000,
    }


async def run_load(
    bootstrap: str,
    topic: str,
    offsets: list[float],
    encode: EventEncoder,
    *,
    offered_rate: float,
    run_tag: str | None = None,
    bad_records: list[bytes] | None = None,
    bad_fraction: float = 0.0,
    seed: int = 0,
    start_delay_s: float = 0.2,
    scheduled_ms: dict[str, int] | None = None,
    client_kwargs: Mapping[str, Any] | None = None,
) -> LoadReport:
    """Send one event per schedule offset; returns the report with every event's scheduled time.

    `client_kwargs`: the cluster's connection arguments (`streamer.kafka.clients.client_kwargs`
    of the command's settings: TLS, SASL); none for a plaintext broker at `bootstrap`.
    """
    from aiokafka import AIOKafkaProducer

    tag = run_tag or new_run_tag()
    connection: dict[str, Any] = {"bootstrap_servers": bootstrap, **(client_kwargs or {})}
    prod = AIOKafkaProducer(**producer_config(), **connection)
    try:
        await prod.start()
        await prod.partitions_for(topic)  # fetch metadata now, not on the first scheduled send
    except BaseException:
        await prod.stop()
        raise
    bad_seq = bad_record_plan(len(offsets), bad_fraction, seed) if bad_records else set()
    bad_cycle = _cycle(bad_records or [])
    behind = HdrHistogram(1, 3_600_000_000, 3)  # microseconds
    max_behind = 0.0
    # filled before each send, so a sink sharing this dict knows an id before its result exists
    scheduled_ms = {} if scheduled_ms is None else scheduled_ms
    futures: list[asyncio.Future[object]] = []
    failed = 0
    # Encode everything before the clock starts, so the send loop only sleeps and sends: at tens
    # of thousands of events/s per-event encoding inside the loop would itself be schedule slip.
    t0 = time.time() + start_delay_s + len(offsets) * ENCODE_ALLOWANCE_S
    planned: list[tuple[str | None, bytes, bytes, int]] = []  # (event id, key, value, sched ms)
    for seq, off in enumerate(offsets):
        sched_ms = int((t0 + off) * 1000)
        if seq in bad_seq:
            planned.append((None, f"{tag}-bad-{seq:09d}".encode(), next(bad_cycle), sched_ms))
        else:
            eid = new_event_id(tag, seq)
            planned.append((eid, eid.encode(), encode(eid, sched_ms, seq), sched_ms))
    try:
        for off, (event_id, key, value, sched_ms) in zip(offsets, planned, strict=True):
            sched = t0 + off
            delay = sched - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if event_id is not None:
                scheduled_ms[event_id] = sched_ms
            late = max(0.0, time.time() - sched)
            behind.record_value(max(1, int(late * 1e6)))
            max_behind = max(max_behind, late * 1000)
            try:
                futures.append(await prod.send(topic, value, key=key, timestamp_ms=sched_ms))
            except Exception:  # a full buffer or closed producer: count it, keep the schedule
                failed += 1
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await prod.stop()
    failed += sum(1 for r in results if isinstance(r, BaseException))
    return LoadReport(
        topic=topic,
        offered_rate=offered_rate,
        duration_s=len(offsets) / offered_rate,  # the window the schedule covers
        scheduled=len(offsets),
        sent=len(futures),
        acked=len(results) - sum(1 for r in results if isinstance(r, BaseException)),
        failed=failed,
        bad=len(bad_seq),
        started_at_ms=int(t0 * 1000),
        max_behind_ms=max_behind,
        p99_behind_ms=behind.get_value_at_percentile(99.0) / 1000.0,
        scheduled_ms=scheduled_ms,
    )


def _cycle(items: list[bytes]) -> Iterator[bytes]:
    while items:
        yield from items
