"""Optional OpenTelemetry spans: one span per batch, linked to the trace of each of its events.

Why per batch and with links: a batch serves events of many search requests at once, so no
single request's trace can be its parent. OpenTelemetry's messaging conventions model a
consumer that processes a batch as one "process" span with a link to each message's creation
context; a downstream team following one request finds the batch that answered it through the
link, and the batch's stage timings (linger, queue, model, publish) on the span.

Off by default (`STREAMER_OTEL_ENABLED`). The SDK and its OTLP/HTTP exporter are the `otel` extra,
imported only when enabled (`otlp_tracer`), so the service image does not need them. The
exporter, sampler and resource are configured the standard way, by the OTEL_* variables the SDK
reads itself (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*). Spans are
exported by a BatchSpanProcessor on its own thread; what the event loop pays is building the
span and its links, measured by `python -m streamer.bench.micro.tracing`. A span keeps at most
OTEL_SPAN_LINK_COUNT_LIMIT links (128 by default): events past that in a larger batch are
counted on the span but not linked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamer.pipeline.batcher import Batch
from streamer.pipeline.routes import Row

log = logging.getLogger("streamer.tracing")

INSTRUMENTATION = "streamer"
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})  # W3C trace context


@dataclass(slots=True)
class BatchStages:
    """What one batch's stages took, summed over the model calls of a bisected batch."""

    queue_s: float = 0.0  # closed -> picked up by its task
    model_s: float = 0.0  # executor calls, failed ones included (they held a worker too)
    publish_s: float = 0.0  # handed to the publisher -> acknowledged (or in its transaction)
    model_calls: int = 0  # more than one: the batch failed and was split
    dead_letters: int = 0  # rows of this batch sent to the DLQ by the batch runner


class BatchTracer:
    """Records one span per published batch on an OpenTelemetry tracer (SDK or any other)."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.context import Context
        from opentelemetry.trace import Link, SpanKind, get_current_span
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._root = Context()  # a batch span has no parent: the events' traces are links
        self._extract = TraceContextTextMapPropagator().extract
        self._span_of = get_current_span
        self._link = Link
        self._kind = SpanKind.CONSUMER

    def links(self, rows: Sequence[Row]) -> list[Any]:
        """A link per row whose traceparent is valid W3C trace context (others are skipped)."""
        links = []
        for row in rows:
            if not row.headers:
                continue
            # latin-1 never fails: bytes that are not trace context fail the W3C format check.
            carrier = {
                k: v.decode("latin-1")
                for k, v in row.headers
                if k in TRACE_HEADERS and v is not None
            }
            if not carrier:
                continue
            span_context = self._span_of(self._extract(carrier)).get_span_context()
            if span_context.is_valid:
                links.append(self._link(span_context))
        return links

    def record(
        self, route: str, topic: str, batch: Batch[Row], stages: BatchStages, now: float
    ) -> None:
        """The span of a batch that is done: from its opening to `now` (monotonic seconds)."""
        end_ns = time.time_ns()
        start_ns = end_ns - int(max(0.0, now - batch.opened_at) * 1e9)
        links = self.links(batch.items)
        span = self._tracer.start_span(
            f"process {topic}",
            context=self._root,
            kind=self._kind,
            links=links,
            start_time=start_ns,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": topic,
                "messaging.batch.message_count": len(batch.items),
                "streamer.route": route,
                "streamer.batch.reason": batch.reason,
                "streamer.batch.padded_rows": batch.padded_rows,
                "streamer.batch.seq_len": batch.seq_len,
                "streamer.batch.linked_events": len(links),
                "streamer.batch.model_calls": stages.model_calls,
                "streamer.batch.dead_letters": stages.dead_letters,
                "streamer.stage.linger_ms": 1e3 * batch.waited_s,
                "streamer.stage.queue_ms": 1e3 * stages.queue_s,
                "streamer.stage.model_ms": 1e3 * stages.model_s,
                "streamer.stage.publish_ms": 1e3 * stages.publish_s,
            },
        )
        span.end(end_time=end_ns)


def otlp_tracer() -> BatchTracer:
    """The service's tracer: the SDK with a batching OTLP/HTTP exporter, set by OTEL_* variables.

    Raises ImportError when the `otel` extra is not installed (the composition root turns it
    into a start-up error). The provider flushes its spans at interpreter exit.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) was not set.
        resource = resource.merge(Resource({SERVICE_NAME: "streamer"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("OpenTelemetry spans on", extra={"event": "otel_enabled"})
    return BatchTracer(provider.get_tracer(INSTRUMENTATION))
