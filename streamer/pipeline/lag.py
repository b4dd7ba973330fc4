"""The consumer group's lag as operators see it: committed offsets, in records and in seconds.

`streamer_consumer_lag` (intake.lag_loop) is this instance's fetch position behind the high
watermark: it drops as soon as records are fetched, even if they are never finished. What the
group owes is behind its *committed* offsets, which is what `kafka-consumer-groups.sh`, Burrow
and KEDA's Kafka scaler read. Every `interval_s` this monitor asks the admin client for the
group's committed offsets and a probe consumer (no group) for the log end offsets of every
partition of the source topics, and exports per partition:

- `streamer_consumer_group_lag{topic,partition}`: log end offset minus committed offset (log
  start offset where the group has not committed yet: `auto_offset_reset=earliest`);
- `streamer_consumer_group_lag_seconds{topic,partition}`: the age of the oldest unprocessed
  record, now minus the timestamp of the record at the committed offset (the probe reads that
  one record); 0 when the partition is caught up.

Every instance exports every partition of the group (not only its own), so a partition whose
owner died still shows its growing lag; the recording rules take `max by (topic, partition)`.
Failures are counted and logged, never fatal: the data path does not depend on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from streamer.pipeline.metrics import Metrics
from streamer.pipeline.state import StopFlags

log = logging.getLogger("streamer.lag")


class GroupLagMonitor:
    """Samples the group's committed-offset lag and time lag per partition of `topics`."""

    def __init__(
        self,
        admin: Any,
        probe: Any,
        metrics: Metrics,
        flags: StopFlags,
        *,
        group_id: str,
        topics: Sequence[str],
        interval_s: float,
        fetch_timeout_s: float = 2.0,
    ) -> None:
        self._admin = admin
        self._probe = probe
        self._metrics = metrics
        self._flags = flags
        self._group_id = group_id
        self._topics = sorted(topics)
        self._interval_s = interval_s
        self._fetch_timeout_s = fetch_timeout_s
        self._started = False

    async def run(self) -> None:
        """Sample every interval until stopping; the clients start lazily and close at the end."""
        try:
            while not self._flags.stopping.is_set():
                try:
                    if not self._started:
                        await self._start()
                    await self.sample()
                except (KafkaError, OSError, TimeoutError) as exc:
                    self._metrics.lag_sample_errors.inc()
                    log.warning(
                        "lag sample failed", extra={"event": "lag_error", "error": repr(exc)}
                    )
                await asyncio.sleep(self._interval_s)
        finally:
            await self.close()

    async def _start(self) -> None:
        await asyncio.wait_for(self._admin.start(), timeout=30)
        await asyncio.wait_for(self._probe.start(), timeout=30)
        self._started = True

    async def close(self) -> None:
        """Stop both clients (bounded; errors ignored)."""
        for client in (self._probe, self._admin):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_stop(client), timeout=10)
        self._started = False

    async def partitions(self) -> list[TopicPartition]:
        """Every partition of the source topics (a metadata request of the admin client)."""
        tps = []
        for topic in await self._admin.describe_topics(self._topics):
            if topic.get("error_code", 0):
                continue  # not there (yet): nothing to owe
            for part in topic["partitions"]:
                tps.append(TopicPartition(topic["topic"], part["partition"]))
        return sorted(tps)

    async def sample(self) -> dict[TopicPartition, tuple[int, float]]:
        """One sample: {partition: (lag in records, lag in seconds)}, also set as metrics."""
        tps = await self.partitions()
        if not tps:
            return {}
        end = await self._probe.end_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(self._group_id, partitions=tps)
        start = await self._probe.beginning_offsets(tps)
        behind: dict[TopicPartition, int] = {}
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else start[tp]
            behind[tp] = max(offset, start[tp])  # retention may have removed committed records
        lag = {tp: max(0, end[tp] - behind[tp]) for tp in tps}
        ages = await self._oldest_unprocessed_age({tp: behind[tp] for tp in tps if lag[tp] > 0})
        out: dict[TopicPartition, tuple[int, float]] = {}
        for tp in tps:
            out[tp] = (lag[tp], ages.get(tp, 0.0))
            labels = (tp.topic, str(tp.partition))
            self._metrics.group_lag.labels(*labels).set(lag[tp])
            self._metrics.group_lag_seconds.labels(*labels).set(out[tp][1])
        return out

    async def _oldest_unprocessed_age(
        self, at: dict[TopicPartition, int]
    ) -> dict[TopicPartition, float]:
        """Now minus the timestamp of the record at each given offset (one fetch per sample)."""
        if not at:
            return {}
        self._probe.assign(list(at))
        for tp, offset in at.items():
            self._probe.seek(tp, offset)
        ages: dict[TopicPartition, float] = {}
        deadline = time.monotonic() + self._fetch_timeout_s
        while len(ages) < len(at) and time.monotonic() < deadline:
            fetched = await self._probe.getmany(timeout_ms=200, max_records=len(at))
            now_ms = time.time() * 1000.0
            for tp, messages in fetched.items():
                if messages and tp not in ages:
                    ages[tp] = max(0.0, (now_ms - messages[0].timestamp) / 1000.0)
                    self._probe.pause(tp)  # one record per partition is all this needs
        self._probe.pause(*at)  # no prefetching between samples
        return ages


async def _stop(client: Any) -> None:
    stop = getattr(client, "stop", None) or client.close
    await stop()
