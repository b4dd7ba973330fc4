"""What differs between the two routes (intent, duplicate): decode, tokenize, results, payloads.

A route is one inference path of DESIGN.md section 1: its source topic, its model head and its
result topic. Each handler turns fetched records into rows of token ids (one tokenizer call per
fetched chunk, not per record) and a batch's scores back into result records. Everything else
in the pipeline is the same for both routes and never asks which route it serves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamer.config import Route, Settings
from streamer.errors import EncodeError
from streamer.model.artifact import ModelMeta
from streamer.model.buckets import pad_to_shape
from streamer.model.tasks import Task
from streamer.records import codec
from streamer.records.registry import SchemaRegistry
from streamer.records.types import DuplicateResult, IntentResult, ProductPairEvent, QueryEvent

TOP_K_SCORES = 3


@dataclass(slots=True)
class Row:
    """One decoded record in flight: its Kafka coordinates, its event and its token ids."""

    tp: Any  # aiokafka TopicPartition (anything hashable in tests)
    offset: int
    generation: int  # assignment generation of tp when fetched (late completions are ignored)
    key: bytes | None
    event: QueryEvent | ProductPairEvent
    source_ts_ms: int
    input_ids: np.ndarray  # int32 (n_tokens,)
    token_type_ids: np.ndarray  # int32 (n_tokens,)
    truncated: bool
    # The input record's Kafka headers as fetched (aiokafka's tuple, kept by reference, not
    # copied): the publisher forwards the configured ones, the tracer links to traceparent.
    headers: Sequence[tuple[str, bytes | None]] = ()
    # Hand-off times for the tail attribution (`attribution.py`): seconds from the source
    # timestamp to the broker's append (0 unless the topic has LogAppendTime), from there to the
    # fetch, fetch to the batcher, and when it reached the batcher (monotonic).
    broker_s: float = 0.0
    fetch_s: float = 0.0
    decode_s: float = 0.0
    ready_at: float = 0.0

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens of the row."""
        return int(self.input_ids.shape[0])


class EncoderLike(Protocol):
    """The tokenizer surface the handlers need (streamer.model.tokenize.Encoder)."""

    def encode_queries(self, texts: list[str]) -> Any: ...

    def encode_products(self, lefts: list[Any], rights: list[Any]) -> Any: ...


def pack_rows(rows: Sequence[Row], padded_rows: int, seq_len: int) -> tuple[np.ndarray, ...]:
    """Rows into the bucket shape (int32 ids, mask, type ids); filler rows by `pad_to_shape`."""
    n = len(rows)
    ids = np.zeros((n, seq_len), dtype=np.int32)
    types = np.zeros((n, seq_len), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int64)
    for i, row in enumerate(rows):
        k = min(row.n_tokens, seq_len)
        ids[i, :k] = row.input_ids[:k]
        types[i, :k] = row.token_type_ids[:k]
        lengths[i] = k
    mask = (np.arange(seq_len) < lengths[:, None]).astype(np.int32)
    if padded_rows == n:
        return ids, mask, types
    return pad_to_shape(ids, mask, types, padded_rows, seq_len)


def _rows_from_encoding(encoded: Any) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Split a padded encoder output into per-row (ids, type ids, truncated) views."""
    lengths = encoded.lengths
    return [
        (
            encoded.input_ids[i, : int(lengths[i])],
            encoded.token_type_ids[i, : int(lengths[i])],
            bool(encoded.truncated[i]),
        )
        for i in range(len(lengths))
    ]


def source_ts_ms(event: Any, kafka_ts_ms: int) -> int:
    """The event's own timestamp if it has one, else the Kafka record's."""
    ts = getattr(event, "ts_ms", None)
    return int(ts) if ts is not None else int(kafka_ts_ms)


@dataclass
class RouteHandler:
    """Base of the two routes: topics, model head and the route-specific record handling."""

    route: Route
    task: Task
    source_topic: str
    result_topic: str
    model: ModelMeta
    encoder: EncoderLike
    # Schema Registry wire format (None: plain JSON in and out). Inputs may be framed or plain
    # (`unframed`); results are framed with our registered schema id (`framed`).
    registry: SchemaRegistry | None = None

    def decode(self, raw: bytes) -> QueryEvent | ProductPairEvent:
        """Decode and validate one record; raises DecodeError."""
        raise NotImplementedError

    def unframed(self, raw: bytes) -> Any:
        """The JSON payload of a record value: a registry frame stripped and validated against
        its writer's schema (the intake resolved its id before decoding); raises DecodeError."""
        return raw if self.registry is None else self.registry.unwrap(raw)

    def framed(self, out: list[bytes | EncodeError]) -> list[bytes | EncodeError]:
        """Results in the registry's wire format (our schema id for the result topic)."""
        registry = self.registry
        if registry is None:
            return out
        return [v if isinstance(v, EncodeError) else registry.frame_for(self.result_topic, v)
                for v in out]  # fmt: skip

    def tokenize(self, events: list[Any]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """Token ids for a chunk of events, one tokenizer call."""
        raise NotImplementedError

    def results(self, rows: Sequence[Row], scores: np.ndarray) -> list[bytes | EncodeError]:
        """Encoded result per row, or the EncodeError (e.g. NaN score) that sends it to the DLQ."""
        raise NotImplementedError

    def payload(self, event: Any) -> bytes:
        """The event re-encoded, for a dead letter of a row whose inference failed alone."""
        raise NotImplementedError


@dataclass
class IntentRoute(RouteHandler):
    """Query -> intent label with confidence and top-k scores."""

    max_query_chars: int = 512

    def decode(self, raw: bytes) -> QueryEvent:
        return codec.decode_query(self.unframed(raw), max_query_chars=self.max_query_chars)

    def tokenize(self, events: list[Any]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        return _rows_from_encoding(self.encoder.encode_queries([e.query for e in events]))

    def payload(self, event: Any) -> bytes:
        return bytes(codec.encode_query_event(event))

    def results(self, rows: Sequence[Row], scores: np.ndarray) -> list[bytes | EncodeError]:
        labels = self.model.labels
        now_ms = int(time.time() * 1000)
        out: list[bytes | EncodeError] = []
        top = np.argsort(-scores[: len(rows)], axis=1)[:, :TOP_K_SCORES]
        for i, row in enumerate(rows):
            best = int(top[i, 0])
            event = row.event
            assert isinstance(event, QueryEvent)
            out.append(
                _encoded(
                    codec.encode_intent_result,
                    IntentResult(
                        event_id=event.event_id,
                        intent=labels[best],
                        confidence=float(scores[i, best]),
                        scores={labels[int(j)]: float(scores[i, int(j)]) for j in top[i]},
                        model=self.model.name,
                        model_version=self.model.version,
                        source_ts_ms=row.source_ts_ms,
                        processed_ts_ms=now_ms,
                        truncated=row.truncated,
                    ),
                )
            )
        return self.framed(out)


@dataclass
class DuplicateRoute(RouteHandler):
    """Product pair -> customer-perceived duplicate probability and decision."""

    def decode(self, raw: bytes) -> ProductPairEvent:
        return codec.decode_pair(self.unframed(raw))

    def tokenize(self, events: list[Any]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        return _rows_from_encoding(
            self.encoder.encode_products(
                [product_fields(e.left) for e in events], [product_fields(e.right) for e in events]
            )
        )

    def payload(self, event: Any) -> bytes:
        return bytes(codec.encode_pair_event(event))

    def results(self, rows: Sequence[Row], scores: np.ndarray) -> list[bytes | EncodeError]:
        threshold = self.model.duplicate_threshold
        now_ms = int(time.time() * 1000)
        out: list[bytes | EncodeError] = []
        for i, row in enumerate(rows):
            event = row.event
            assert isinstance(event, ProductPairEvent)
            score = float(scores[i, 0])
            out.append(
                _encoded(
                    codec.encode_duplicate_result,
                    DuplicateResult(
                        event_id=event.event_id,
                        left_id=event.left.id,
                        right_id=event.right.id,
                        score=score,
                        is_duplicate=score >= threshold,
                        threshold=threshold,
                        model=self.model.name,
                        model_version=self.model.version,
                        source_ts_ms=row.source_ts_ms,
                        processed_ts_ms=now_ms,
                        truncated=row.truncated,
                    ),
                )
            )
        return self.framed(out)


def _encoded(encode: Any, result: Any) -> bytes | EncodeError:
    """Encode one result; an unencodable one (NaN, out of range) is returned, not raised."""
    try:
        return bytes(encode(result))
    except EncodeError as err:
        return err


def product_fields(product: Any) -> dict[str, object]:
    """The product's fields as the serializer's mapping (dataclass -> dict)."""
    return {
        "title": product.title,
        "brand": product.brand,
        "product_type": product.product_type,
        "price": product.price,
        "description": product.description,
        "model_number": product.model_number,
    }


def make_routes(settings: Settings, model: ModelMeta, encoder: EncoderLike) -> list[RouteHandler]:
    """One handler per route enabled in settings."""
    handlers: list[RouteHandler] = []
    if Route.INTENT in settings.routes:
        handlers.append(
            IntentRoute(
                Route.INTENT, Task.INTENT, settings.topic_queries, settings.topic_intents,
                model, encoder, max_query_chars=settings.max_query_chars,
            )
        )  # fmt: skip
    if Route.DUPLICATE in settings.routes:
        handlers.append(
            DuplicateRoute(
                Route.DUPLICATE, Task.DUPLICATE, settings.topic_pairs, settings.topic_duplicates,
                model, encoder,
            )
        )  # fmt: skip
    return handlers
