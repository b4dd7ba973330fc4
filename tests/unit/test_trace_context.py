"""Trace context end to end, without a broker: the configured upstream headers (W3C
traceparent/tracestate by default) go from each input record to its result and its dead letter,
never replacing the service's own headers; with tracing on, one span per batch links to each
event's trace (the real OpenTelemetry SDK, recorded by its in-memory exporter).

The parts are wired by the composition root (`app.assemble`) around fakes of the executor,
encoder and Kafka clients, and records enter through the intake's real `ingest`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from streamer.app import assemble, build_tracer, target_rates
from streamer.config import load_settings
from streamer.errors import ErrorCode
from streamer.model.artifact import ModelMeta
from streamer.pipeline.batcher import intent_policy
from streamer.pipeline.exactly_once import TransactionalPublisher
from streamer.pipeline.metrics import Metrics
from streamer.pipeline.publisher import HeaderFn, forwarded
from streamer.pipeline.routes import Row, make_routes
from streamer.pipeline.service import Service, StartupError
from streamer.pipeline.state import Progress, StopFlags
from streamer.pipeline.tracing import BatchTracer
from tests.unit.test_exactly_once import Q0, FakeBroker, FakeControl, FakeTxnProducer, _state, _wait
from tests.unit.test_service_dispatch import _Encoder

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TP = ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01".encode())
TS = ("tracestate", b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
TP2 = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
MODEL_HEADERS = [("model", b"m"), ("model_version", b"1")]
W3C = frozenset({"traceparent", "tracestate"})
QUERIES, INTENTS, DLQ = "queries", "search.query-intents.v1", "search.streamer.dlq.v1"


# --------------------------------------------------------------------------- selection
def test_forwarded_appends_the_named_upstream_headers_after_the_own_ones() -> None:
    own = [("model", b"m")]
    upstream = (("x-other", b"1"), TP, TS)
    assert forwarded(own, upstream, W3C) == [("model", b"m"), TP, TS]
    assert own == [("model", b"m")], "the shared list of a batch's own headers is not mutated"


def test_forwarded_never_replaces_a_header_the_service_sets() -> None:
    upstream = (("model", b"upstream-model"), TP, ("model_version", b"0"))
    names = frozenset({"model", "model_version", "traceparent"})
    assert forwarded(MODEL_HEADERS, upstream, names) == [*MODEL_HEADERS, TP]


def test_nothing_to_forward_returns_the_own_headers_as_they_are() -> None:
    own = list(MODEL_HEADERS)
    assert forwarded(own, (), W3C) is own  # a record without headers
    assert forwarded(own, (("x-other", b"1"),), W3C) is own  # none of them named
    assert forwarded(own, (TP,), frozenset()) is own  # forwarding switched off


def test_forwarded_keeps_null_values_and_repeated_names_as_upstream_sent_them() -> None:
    upstream = (("tracestate", None), TP, TP2)
    assert forwarded([], upstream, W3C) == [("tracestate", None), TP, TP2]


# --------------------------------------------------------------------------- settings
def test_forward_headers_setting_is_a_validated_comma_list(monkeypatch: Any) -> None:
    monkeypatch.delenv("STREAMER_FORWARD_HEADERS", raising=False)
    assert load_settings().forward_headers == ("traceparent", "tracestate")
    assert not load_settings().otel_enabled
    monkeypatch.setenv("STREAMER_FORWARD_HEADERS", " traceparent, x-request-id ,traceparent")
    assert load_settings().forward_headers == ("traceparent", "x-request-id")
    monkeypatch.setenv("STREAMER_FORWARD_HEADERS", "")
    assert load_settings().forward_headers == ()
    for bad in ("trace parent", "traceparent,x:y", "x" * 256):
        monkeypatch.setenv("STREAMER_FORWARD_HEADERS", bad)
        with pytest.raises(ValidationError, match="forward_headers"):
            load_settings()


# --------------------------------------------------------------------------- the pipeline
class _Executor:
    """Answers at once; with `fail`, every model call raises (the batch is bisected)."""

    capacity = 2
    parallelism = 1
    restarts = 0

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.runner_info: dict[str, str] = {}

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def live_workers(self) -> int:
        return 1

    async def submit(
        self, task: Any, ids: np.ndarray, mask: np.ndarray, types: Any, times: Any = None
    ) -> Any:
        await asyncio.sleep(0.002)  # a model call takes time: the span's model stage shows it
        if self.fail:
            raise RuntimeError("poison batch")
        scores = np.zeros((ids.shape[0], 2), dtype=np.float32)
        scores[:, 0] = 1.0
        return scores


class _Producer:
    """Acknowledges every send at once and keeps (topic, key, headers) of each."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, Any]] = []

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> Any:
        self.sent.append((topic, key, headers))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def headers(self, topic: str, key: bytes) -> Any:
        [headers] = [h for t, k, h in self.sent if t == topic and k == key]
        return headers


class _Consumer:
    async def commit(self, offsets: Any) -> None: ...


@dataclass(frozen=True)
class _Partition:
    topic: str
    partition: int


SOURCE = _Partition(QUERIES, 0)


@dataclass
class _Msg:
    """What the intake reads of an aiokafka ConsumerRecord."""

    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes | None], ...] = ()
    key: bytes | None = None
    timestamp: int = 0


def _query(i: int, headers: tuple[tuple[str, bytes | None], ...] = ()) -> _Msg:
    body = {"event_id": f"q{i}", "ts_ms": 1_700_000_000_000, "query": f"query {i}"}
    return _Msg(offset=i, value=orjson.dumps(body), headers=headers, key=f"q{i}".encode())


def _bad(i: int, headers: tuple[tuple[str, bytes | None], ...] = ()) -> _Msg:
    return _Msg(offset=i, value=b"{not json", headers=headers, key=f"q{i}".encode())


def _service(
    *,
    fail: bool = False,
    tracer: BatchTracer | None = None,
    extra_headers: HeaderFn | None = None,
    producer: _Producer | None = None,
    consumer: Any = None,
    **overrides: Any,
) -> tuple[Service, _Producer]:
    """The real parts around fakes; `producer` and `consumer` replace the default stand-ins."""
    settings = load_settings(routes="intent", topic_queries=QUERIES, **overrides)
    settings = settings.model_copy(update=target_rates("cpu", settings))
    model = ModelMeta(name="m", version="1", labels=("a", "b"), duplicate_threshold=0.5)
    policy = intent_policy(max_batch=8, max_padded_tokens=8 * 16, max_linger_s=10.0)
    producer = producer or _Producer()
    service = assemble(
        settings, make_routes(settings, model, _Encoder()), _Executor(fail),  # type: ignore[arg-type]
        {"intent": policy}, producer=producer, consumer=consumer or _Consumer(),
        extra_headers=extra_headers, tracer=tracer,
    )  # fmt: skip
    return service, producer


async def _run(service: Service, messages: list[_Msg]) -> None:
    """Ingest one fetched chunk, run its batch now, wait for every result and dead letter."""
    state = service.routes["intent"]
    service.intake.ingest(state, SOURCE, messages, now=time.monotonic())  # type: ignore[arg-type]
    service.runner.flush_all(now=time.monotonic())
    while state.tasks:
        await asyncio.gather(*list(state.tasks))


async def test_results_and_dead_letters_carry_the_input_trace_context() -> None:
    service, producer = _service(forward_headers="traceparent,tracestate,model")
    upstream = (("x-other", b"1"), TP, ("model", b"upstream-model"), TS)
    await _run(service, [_query(0, upstream), _bad(1, (TP2,)), _query(2)])
    assert producer.headers(INTENTS, b"q0") == [*MODEL_HEADERS, TP, TS]
    assert producer.headers(INTENTS, b"q2") == MODEL_HEADERS  # no headers in, none forwarded
    assert producer.headers(DLQ, b"q1") == [TP2]  # undecodable: still on its trace


async def test_forwarding_can_be_switched_off() -> None:
    service, producer = _service(forward_headers="")
    await _run(service, [_query(0, (TP, TS)), _bad(1, (TP,))])
    assert producer.headers(INTENTS, b"q0") == MODEL_HEADERS
    assert producer.headers(DLQ, b"q1") is None


async def test_a_replay_keeps_its_own_headers_and_forwards_the_rest() -> None:
    def replay(tp: Any, offset: int) -> list[tuple[str, bytes]]:
        return [("replay-id", b"r1"), ("source-offset", str(offset).encode())]

    service, producer = _service(forward_headers="traceparent,replay-id", extra_headers=replay)
    upstream = (("replay-id", b"upstream"), TP)
    await _run(service, [_query(0, upstream), _bad(1, upstream)])
    assert producer.headers(INTENTS, b"q0") == [*MODEL_HEADERS, *replay(None, 0), TP]
    assert producer.headers(DLQ, b"q1") == [*replay(None, 1), TP]


async def test_a_row_that_fails_inference_alone_keeps_its_trace_context_in_the_dlq() -> None:
    service, producer = _service(fail=True)
    await _run(service, [_query(0, (TP, TS)), _query(1)])
    assert producer.headers(DLQ, b"q0") == [TP, TS]
    assert producer.headers(DLQ, b"q1") is None


class _RecordingTxnProducer(FakeTxnProducer):
    """The exactly-once broker model's producer, also keeping each record's headers."""

    headers: list[tuple[str, Any]]

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> Any:
        self.headers.append((topic, headers))
        return await super().send(topic, value, key=key, headers=headers)


async def test_exactly_once_forwards_the_same_headers_inside_its_transactions() -> None:
    """The transactional publisher builds its records on its own: the headers flow there too."""
    sent: list[tuple[str, Any]] = []
    broker = FakeBroker()

    def producer(tid: str) -> FakeTxnProducer:
        made = _RecordingTxnProducer(broker, tid)
        made.headers = sent
        return made

    publisher = TransactionalPublisher(
        producer, Progress(), Metrics(), StopFlags(), dlq_topic="dlq", group_id="g",
        timeout_s=5.0, retry_backoff_s=0.0, forward_headers=("traceparent",),
    )  # fmt: skip
    tp = Q0
    publisher.bind(FakeControl([tp]))
    progress = publisher._progress
    progress.assigned([tp])
    await publisher.partitions_assigned({tp})
    state = _state()
    generation = progress.generation(tp)
    for offset in (0, 1):
        state.backpressure.add(1)
        progress.track(tp, offset)
    publisher.dead_letter_message(
        state, tp, generation, _bad(0, (TP, TS)), ErrorCode.NOT_JSON, "bad"
    )
    event = SimpleNamespace(event_id="q1")
    ids = np.zeros(4, dtype=np.int32)
    row = Row(tp, 1, generation, b"q1", event, 0, ids, ids, False, (TS, TP2))  # type: ignore[arg-type]
    await publisher.publish(state, [row], [b"result"])
    await _wait(lambda: len(sent) == 2)
    await publisher.commit()
    assert sent == [("dlq", [TP]), ("results", [("model", b"m"), ("model_version", b"v"), TP2])]
    assert broker.committed == {("g", tp): 2}
    await publisher.close()


# --------------------------------------------------------------------------- spans
def _tracer() -> tuple[BatchTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return BatchTracer(provider.get_tracer("test")), exporter


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes)


async def test_one_span_per_batch_links_each_valid_event_trace() -> None:
    tracer, exporter = _tracer()
    service, _ = _service(tracer=tracer)
    invalid = [
        ("traceparent", b"ff-" + TP[1][3:]),  # version ff is forbidden
        ("traceparent", f"00-{'0' * 32}-{SPAN_ID}-01".encode()),  # all-zero trace id
        ("traceparent", b"not a traceparent"),
        ("traceparent", b"\xff\xfe"),  # not even text
    ]
    messages = [_query(0, (TP, TS)), _query(1), _query(2, (TP2,))]
    messages += [_query(3 + i, (h,)) for i, h in enumerate(invalid)]
    await _run(service, messages)
    [span] = exporter.get_finished_spans()
    assert span.name == f"process {QUERIES}" and span.kind is SpanKind.CONSUMER
    assert span.parent is None, "a batch serves many requests: their traces are links"
    linked = [
        (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in span.links
    ]
    assert linked == [(TRACE_ID, SPAN_ID), ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")]
    assert span.links[0].context.is_remote
    assert [link.context.trace_flags.sampled for link in span.links] == [True, False]
    assert span.links[0].context.trace_state.to_header() == TS[1].decode()
    attrs = _attrs(span)
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == QUERIES
    assert attrs["messaging.batch.message_count"] == 7
    assert attrs["streamer.batch.linked_events"] == 2
    assert attrs["streamer.route"] == "intent" and attrs["streamer.batch.reason"] == "flush"
    assert attrs["streamer.batch.model_calls"] == 1 and attrs["streamer.batch.dead_letters"] == 0
    assert attrs["streamer.stage.model_ms"] >= 2.0  # the executor's 2 ms
    for stage in ("linger", "queue", "publish"):
        assert attrs[f"streamer.stage.{stage}_ms"] >= 0.0
    assert span.end_time - span.start_time >= 2_000_000  # ns: the span covers the model call


async def test_a_bisected_batch_sums_its_model_calls_and_counts_its_dead_letters() -> None:
    tracer, exporter = _tracer()
    service, producer = _service(fail=True, tracer=tracer)
    await _run(service, [_query(0, (TP,)), _query(1)])
    [span] = exporter.get_finished_spans()
    attrs = _attrs(span)
    # [q0, q1] fails, then [q0] and [q1] fail alone: three calls of >= 2 ms, two dead letters.
    assert attrs["streamer.batch.model_calls"] == 3
    assert attrs["streamer.batch.dead_letters"] == 2
    assert attrs["streamer.stage.model_ms"] >= 6.0
    assert attrs["streamer.stage.publish_ms"] == 0.0  # nothing was published as a result
    assert len(span.links) == 1
    assert len([t for t, _, _ in producer.sent if t == DLQ]) == 2


async def test_no_tracer_no_spans() -> None:
    """Tracing off (the default) builds no tracer, so the batch runner records nothing."""
    assert build_tracer(load_settings()) is None
    service, producer = _service()
    assert service.runner._tracer is None
    await _run(service, [_query(0, (TP,))])
    assert producer.headers(INTENTS, b"q0") == [*MODEL_HEADERS, TP]


def test_enabled_tracing_builds_the_otlp_tracer_named_streamer(monkeypatch: Any) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    tracer = build_tracer(load_settings(otel_enabled=True))
    assert isinstance(tracer, BatchTracer)
    assert tracer._tracer.resource.attributes["service.name"] == "streamer"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "search-intents")
    tracer = build_tracer(load_settings(otel_enabled=True))
    assert tracer is not None
    assert tracer._tracer.resource.attributes["service.name"] == "search-intents"


def test_enabled_tracing_without_the_otel_extra_stops_the_start_up(monkeypatch: Any) -> None:
    # None in sys.modules makes `import` raise ImportError, as a missing package does.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(StartupError, match=r"streamer\[otel\]"):
        build_tracer(load_settings(otel_enabled=True))


def test_the_tracing_microbenchmark_measures_every_case(capsys: Any) -> None:
    """A smoke run (one batch each): the benchmark's cases run and each prints its cost."""
    from streamer.bench.micro import tracing

    assert tracing.main(["--batches", "1", "--repeat", "1", "--records", "10"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "us/event" in line]
    assert len(lines) == 3 + 4 * len(tracing.BATCH_SIZES)
    assert any("span per batch of 128 (128 links)" in line for line in lines)
