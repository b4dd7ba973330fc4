"""Trace context microbenchmark: CPU per event of header forwarding and of the batch spans.

    python -m streamer.bench.micro.tracing [--batches 2000] [--repeat 5] [--records 20000]

What the event loop pays per event, measured as this thread's CPU time (`time.thread_time`,
so other processes on shared cores do not inflate it), best of `--repeat`:

- forwarding: choosing the configured upstream headers of a result (`publisher.forwarded`),
  for a record with trace context and other headers, one without headers, and forwarding off;
- spans (`STREAMER_OTEL_ENABLED`): `BatchTracer.record` on the real OpenTelemetry SDK, one span
  per batch with a link per traced event, the span handed to an in-memory exporter (the
  service hands it to a BatchSpanProcessor's queue instead: a deque append), per batch size;
- export: OTLP protobuf encoding of those spans, which the service's BatchSpanProcessor does
  on its own thread (CPU of the same machine, not of the event loop).

Needs the `otel` extra. It prints, never asserts: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np

from streamer.pipeline.batcher import Batch
from streamer.pipeline.publisher import forwarded
from streamer.pipeline.routes import Row
from streamer.pipeline.tracing import BatchStages, BatchTracer
from streamer.records.types import QueryEvent

BATCH_SIZES = (4, 32, 128)  # cpu intents, accelerator intents, accelerator pairs
OWN = [("model", b"minilm-intent"), ("model_version", b"2026.11.27")]
FORWARD = frozenset({"traceparent", "tracestate"})


def _headers(i: int) -> tuple[tuple[str, bytes], ...]:
    """What an instrumented upstream producer sends: trace context and a few others."""
    return (
        ("traceparent", f"00-{i:032x}-{i + 1:016x}-01".encode()),
        ("tracestate", b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("content-type", b"application/json"),
        ("x-request-id", f"{i:08x}-5e4c-4a8f-9d2e-7b1a3c6d0e9f".encode()),
        ("source", b"search-frontend"),
    )


def _rows(n: int, traced: bool) -> list[Row]:
    ids = np.ones(16, dtype=np.int32)
    return [
        Row(
            tp=("search.queries.v1", 0),
            offset=i,
            generation=0,
            key=None,
            event=QueryEvent(event_id=f"q{i}", query="wireless earbuds", ts_ms=0),
            source_ts_ms=0,
            input_ids=ids,
            token_type_ids=ids,
            truncated=False,
            headers=_headers(i + 1) if traced else (),
        )
        for i in range(n)
    ]


def _cpu_per_item(run: Callable[[], object], items: int, repeat: int) -> float:
    """Best-of-`repeat` thread CPU seconds of `run()`, per item."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        run()
        best = min(best, time.thread_time() - start)
    return best / items


def _forwarding(rows: Sequence[Row], names: frozenset[str], repeat: int) -> float:
    def run() -> None:
        for row in rows:
            forwarded(OWN, row.headers, names)

    return _cpu_per_item(run, len(rows), repeat)


def _spans(batch_size: int, batches: int, traced: bool, repeat: int) -> tuple[float, float, float]:
    """(record CPU per event, OTLP encoding CPU per event, links per span) for one size."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = BatchTracer(provider.get_tracer("streamer.bench"))
    now = time.monotonic()
    # One batch recorded `batches` times: nothing is cached between records (each parses its
    # rows' traceparent again), and memory stays that of one batch plus the finished spans.
    batch = Batch(
        items=_rows(batch_size, traced),
        lengths=[16] * batch_size,
        seq_len=16,
        padded_rows=batch_size,
        opened_at=now - 0.004,
        closed_at=now - 0.003,
        reason="size",
    )
    stages = BatchStages(queue_s=0.0002, model_s=0.002, publish_s=0.001, model_calls=1)
    events = batches * batch_size

    def record() -> None:
        exporter.clear()
        for _ in range(batches):
            tracer.record("intent", "search.queries.v1", batch, stages, now)

    per_event = _cpu_per_item(record, events, repeat)
    spans = exporter.get_finished_spans()
    links = len(spans[0].links) if spans else 0

    def encode() -> None:
        encode_spans(spans).SerializeToString()

    encode_per_event = _cpu_per_item(encode, events, repeat)
    provider.shutdown()
    return per_event, encode_per_event, links


def main(argv: list[str] | None = None) -> int:
    """Run the microbenchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000, help="batches per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    parser.add_argument("--records", type=int, default=20_000, help="records per forwarding run")
    args = parser.parse_args(argv)
    traced, bare = _rows(args.records, traced=True), _rows(args.records, traced=False)
    lines: list[tuple[str, float]] = [
        ("forward: 5 headers in, trace context forwarded", _forwarding(traced, FORWARD, args.repeat)),
        ("forward: no headers in (nothing to do)", _forwarding(bare, FORWARD, args.repeat)),
        ("forward: forwarding off (forward_headers empty)", _forwarding(traced, frozenset(), args.repeat)),
    ]  # fmt: skip
    for size in BATCH_SIZES:
        for with_context in (True, False):
            record, encode, links = _spans(size, args.batches, with_context, args.repeat)
            what = f"{links} links" if with_context else "no trace context, no links"
            lines.append((f"span per batch of {size} ({what}): record", record))
            lines.append(
                (f"span per batch of {size} ({what}): OTLP encode (export thread)", encode)
            )
    width = max(len(label) for label, _ in lines)
    print(
        f"trace context microbenchmark: CPU of this thread per event, best of {args.repeat}, "
        f"{args.batches} batches per span measurement"
    )
    for label, seconds in lines:
        print(f"  {label:<{width}}  {1e6 * seconds:8.3f} us/event")
    print("tracing off (the default): no span, no link parsing; forwarding as above")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
