"""Trace context through the real service and a real broker (issue 19): the W3C headers of an
input record come back on its result, and on the dead letter of a record that cannot be
decoded, so a downstream team can follow one search request through the service; with
tracing on, the batch's span reaches an OTLP/HTTP receiver linked to the request's trace.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.pipeline_harness import ServiceProcess, create_topics, query_event

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TP = ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
TS = ("tracestate", b"congo=t61rcWkgMzE")
TP_BAD = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


class _OtlpReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on the loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None: ...

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"

    def wait_for_link(self, trace_id: bytes, timeout_s: float) -> Any:
        """The first span linked to trace_id, or None at the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for span in list(self.spans):
                if any(link.trace_id == trace_id for link in span.links):
                    return span
            time.sleep(0.1)
        return None


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await (await producer.send(topic, value, key=key, headers=headers))
    finally:
        await producer.stop()


async def _headers_by_key(
    bootstrap: str, topic: str, keys: set[bytes], timeout_s: float
) -> dict[bytes, list[tuple[str, bytes]]]:
    """Each expected key's record headers, read from the start of the topic."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50,
    )  # fmt: skip
    await consumer.start()
    found: dict[bytes, list[tuple[str, bytes]]] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while not keys <= found.keys() and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for msg in messages:
                    found[msg.key] = list(msg.headers)
    finally:
        await consumer.stop()
    return found


async def test_trace_context_reaches_the_result_the_dead_letter_and_the_batch_span(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    topics = await create_topics(kafka_bootstrap, partitions=1)
    receiver = _OtlpReceiver()
    svc = ServiceProcess(
        bootstrap=kafka_bootstrap,
        artifact=tiny_cpu_artifact,
        topics=topics,
        log_path=tmp_path / "svc.log",
        routes="intent",
        extra_env={
            "STREAMER_FORWARD_HEADERS": "traceparent,tracestate,x-request-id",
            "STREAMER_OTEL_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export soon, not after the default 5 s
        },
    ).start()
    try:
        await _produce(
            kafka_bootstrap,
            topics.queries,
            [
                (b"q-traced", query_event("q-traced", "wireless earbuds"),
                 [("x-request-id", b"r-1"), TP, ("x-internal", b"not forwarded"), TS]),
                (b"q-bad", b"{not json", [TP_BAD]),
                (b"q-plain", query_event("q-plain", "where is my order"), None),
            ],
        )  # fmt: skip
        results = await _headers_by_key(
            kafka_bootstrap, topics.intents, {b"q-traced", b"q-plain"}, 120
        )
        letters = await _headers_by_key(kafka_bootstrap, topics.dlq, {b"q-bad"}, 30)
        span = receiver.wait_for_link(bytes.fromhex(TP[1].decode().split("-")[1]), 30)
    finally:
        svc.stop()
        receiver.shutdown()
        receiver.server_close()
    assert {b"q-traced", b"q-plain"} <= results.keys(), svc.log_tail()
    traced = results[b"q-traced"]
    # The service's own headers first, then the forwarded ones in the order they came.
    assert [name for name, _ in traced[:2]] == ["model", "model_version"]
    assert traced[2:] == [("x-request-id", b"r-1"), TP, TS]
    assert [name for name, _ in results[b"q-plain"]] == ["model", "model_version"]
    assert letters.get(b"q-bad") == [TP_BAD], svc.log_tail()
    # The span of the batch that answered q-traced, linked to its trace, with stage timings.
    assert span is not None, svc.log_tail()
    assert span.name == f"process {topics.queries}"
    assert len(span.parent_span_id) == 0, "a batch span is a root: the requests are links"
    [link] = [link for link in span.links if link.trace_id.hex() == TP[1].decode().split("-")[1]]
    assert link.span_id.hex() == "b7ad6b7169203331"
    assert link.flags & 0x200, "the link points at a remote span: the upstream producer's"
    # (The link's tracestate and sampled flag are on the SDK's span, as the unit tests show;
    # the OTLP encoder of opentelemetry-python 1.45 sends neither for a link.)
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["streamer.stage.model_ms"].double_value > 0
    assert attrs["messaging.batch.message_count"].int_value >= 1
