"""Prometheus metrics of the service and the small HTTP server exposing /metrics, /healthz, /readyz.

One registry per Service so several services can live in one test process. Histograms are in
seconds (Prometheus convention); buckets are dense around the 10 ms budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# 0.5 ms .. 30 s: fine steps below 20 ms where the intent budget lives, coarse above.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015,
    0.020, 0.030, 0.050, 0.075, 0.100, 0.200, 0.500, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
FILL_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
STAGES = ("fetch", "queue", "linger", "model", "produce")


class Metrics:
    """All metrics of one service instance, labelled by route where it matters."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.e2e_latency = Histogram(
            "streamer_end_to_end_seconds",
            "Source timestamp to produce acknowledgement, per record (exactly-once: to the "
            "commit of the transaction that makes it visible).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "streamer_stage_seconds",
            "Per-batch stage latency: fetch (source ts -> fetched), queue (fetched -> batch "
            "open), linger (open -> close), model (submit -> scores), produce (send -> ack).",
            ["route", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Where the slowest events spent their time (`streamer.pipeline.attribution`).
        self.tail_segment_seconds = Counter(
            "streamer_tail_segment_seconds",
            "Seconds events spent in each hand-off segment (fetch, decode, linger, queue, "
            "worker_wait, run, return, produce; they sum to the event's end-to-end time), for "
            "events=slow (above the running P99 when they finished) and events=sampled (1 in "
            "16 of all events).",
            ["route", "events", "segment"],
            registry=r,
        )
        self.tail_events = Counter(
            "streamer_tail_events",
            "Events counted in each set of streamer_tail_segment_seconds.",
            ["route", "events"],
            registry=r,
        )
        self.tail_threshold = Gauge(
            "streamer_tail_threshold_seconds",
            "The running P99 of the service-side end-to-end time (last 1,024 events) above "
            "which an event counts as slow.",
            ["route"],
            registry=r,
        )
        self.batches = Counter(
            "streamer_batches_total",
            "Batches dispatched, by why they closed: size, tokens, linger, idle (a worker was "
            "free), flush (drain, rebalance, paused).",
            ["route", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "streamer_batch_rows",
            "Real rows per batch.",
            ["route"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_fill = Histogram(
            "streamer_batch_fill_ratio",
            "Real tokens / padded tokens of a batch (how much compute is padding).",
            ["route"],
            buckets=FILL_BUCKETS,
            registry=r,
        )
        self.records_in = Counter(
            "streamer_records_in_total", "Records fetched.", ["route"], registry=r
        )
        self.results_out = Counter(
            "streamer_results_out_total",
            "Results acknowledged by the broker.",
            ["route"],
            registry=r,
        )
        self.dlq = Counter(
            "streamer_dlq_total", "Records sent to the DLQ, by error code.", ["code"], registry=r
        )
        self.inflight = Gauge(
            "streamer_inflight_records", "Records fetched but not yet acknowledged.", ["route"],
            registry=r,
        )  # fmt: skip
        self.paused_partitions = Gauge(
            "streamer_paused_partitions",
            "Partitions paused by backpressure.",
            ["route"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamer_consumer_lag",
            "High watermark minus position, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.group_lag = Gauge(
            "streamer_consumer_group_lag",
            "Log end offset minus the consumer group's committed offset, per partition of the "
            "source topics (what KEDA's Kafka scaler and kafka-consumer-groups.sh read).",
            ["topic", "partition"],
            registry=r,
        )
        self.group_lag_seconds = Gauge(
            "streamer_consumer_group_lag_seconds",
            "Age of the oldest unprocessed record: now minus the timestamp of the record at the "
            "group's committed offset; 0 when the partition is caught up.",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge(
            "streamer_ready",
            "1 while /readyz answers 200 (consuming, not draining, live workers), else 0.",
            registry=r,
        )
        self.lag_sample_errors = Counter(
            "streamer_lag_sample_errors_total",
            "Failed samples of the group's committed-offset lag (admin or probe request).",
            registry=r,
        )
        self.gc_pause = Histogram(
            "streamer_gc_pause_seconds",
            "Garbage-collector passes in the service process (they stop its event loop), by "
            "generation.",
            ["generation"],
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.010, 0.020, 0.050, 0.1),
            registry=r,
        )
        self.worker_restarts = Gauge(
            "streamer_worker_restarts", "Worker processes restarted so far.", registry=r
        )
        self.commits = Counter("streamer_commits_total", "Offset commits.", registry=r)
        self.unreadable_batches = Counter(
            "streamer_unreadable_batches",
            "Record batches the consumer could not read (reason: codec = no library for its "
            "compression, crc = checksum mismatch, corrupt), by the policy applied: hold (the "
            "partition waits, retried) or skip (offsets dead-lettered as UNREADABLE_BATCH).",
            ["topic", "partition", "reason", "policy"],
            registry=r,
        )
        self.stalled_since = Gauge(
            "streamer_partition_stalled_since_seconds",
            "Unix time since which a partition is held at a batch it cannot read (hold policy); "
            "absent when none is. Alert on time() minus it (deploy/prometheus).",
            ["topic", "partition", "reason"],
            registry=r,
        )
        self.transactions = Counter(
            "streamer_transactions_total",
            "Exactly-once: per-partition transactions committed (results and input offset made "
            "visible together) or failed (aborted or fenced: the partition resumes from its "
            "committed offset and redoes the rest).",
            ["outcome"],
            registry=r,
        )
        self.transaction_commit = Histogram(
            "streamer_transaction_commit_seconds",
            "Exactly-once: one partition's commit (offsets into the transaction, then EndTxn).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.linger_seconds = Gauge(
            "streamer_linger_seconds", "Current adaptive linger of the batcher.", ["route"],
            registry=r,
        )  # fmt: skip
        self.produce_errors = Counter(
            "streamer_produce_errors_total", "Failed sends that were retried.", registry=r
        )
        self.linger_inputs = Gauge(
            "streamer_linger_input_p99_seconds",
            "Recent P99 of each stage that the linger controller subtracts from the latency "
            "budget (the linger is what is left).",
            ["route", "stage"],
            registry=r,
        )
        self.ignored_completions = Gauge(
            "streamer_ignored_completions",
            "Acknowledgements that matched no pending record: late after a revocation, or a "
            "record answered twice (result and dead letter).",
            registry=r,
        )
        self.model_info = Gauge(
            "streamer_model_info",
            "1 for the model the workers serve: the variant is what the start-up parity check "
            "chose on this machine (fp32 where int8 missed the floor here).",
            ["model", "version", "target", "variant"],
            registry=r,
        )

    def watch_gc(self) -> Callable[[], None]:
        """Time every collection into `gc_pause` (gc.callbacks); returns the unregister call.

        A pass of the collector stops the event loop mid-batch: timing each one says whether
        they reach the tail (a few microseconds of bookkeeping per collection)."""
        started: list[float] = [0.0]
        children = {g: self.gc_pause.labels(str(g)) for g in range(3)}

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                children[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(on_gc)
        return lambda: gc.callbacks.remove(on_gc) if on_gc in gc.callbacks else None

    def set_model(self, info: dict[str, str]) -> None:
        """Export what the runners serve as `streamer_model_info{...} 1`."""
        self.model_info.clear()
        self.model_info.labels(
            info.get("model", ""), info.get("version", ""), info.get("target", ""),
            info.get("variant", ""),
        ).set(1)  # fmt: skip

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


class HealthServer:
    """Serves /metrics, /healthz (process alive) and /readyz (consuming and workers up).

    A plain asyncio server instead of prometheus_client's threaded one: it shares the event
    loop with the service, so readiness reads the service's state without locks.
    """

    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], bool],
        host: str,
        port: int,
        why_not: Callable[[], list[str]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._ready = ready
        self._why_not = why_not  # reasons named in a 503's body (e.g. held partitions)
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 = any free port in tests)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request_line.decode("latin-1").split()
            target = parts[1] if len(parts) >= 2 else "/"
            if target.startswith("/metrics"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self._metrics.render()
            elif target.startswith("/healthz"):
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif target.startswith("/readyz"):
                ok = self._ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", b"ready\n" if ok else b"not ready\n"
                if not ok and self._why_not is not None:
                    body += "".join(f"{why}\n" for why in self._why_not()).encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
