"""What differs between the intent path and the duplicate path: decode, tokenize, build results.

Each handler turns fetched records into rows of token ids (one tokenizer call per fetched
chunk, not per record) and turns a batch's scores back into result records. The service
around it is the same for both paths.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamer.config import PathName, Settings
from streamer.errors import EncodeError
from streamer.model.tasks import Task
from streamer.records import codec
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
    fetched_at: float  # time.monotonic() when fetched
    input_ids: np.ndarray  # int32 (n_tokens,)
    token_type_ids: np.ndarray  # int32 (n_tokens,)
    truncated: bool

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens of the row."""
        return int(self.input_ids.shape[0])


class EncoderLike(Protocol):
    """The tokenizer surface the handlers need (streamer.model.tokenize.Encoder)."""

    def encode_queries(self, texts: list[str]) -> Any: ...

    def encode_products(self, lefts: list[Any], rights: list[Any]) -> Any: ...


@dataclass(frozen=True)
class ModelInfo:
    """What results carry about the model, read once from the artifact manifest."""

    name: str
    version: str
    labels: tuple[str, ...]
    duplicate_threshold: float


def pack_batch(rows: Sequence[Row], padded_rows: int, seq_len: int) -> tuple[np.ndarray, ...]:
    """Pad rows into the bucket shape: int32 input ids, attention mask, token type ids.

    Filler rows (beyond len(rows)) are an empty `[CLS] [SEP]` input, never an all-masked row,
    which some backends turn into NaN; their outputs are discarded.
    """
    from streamer.model.tokenize import CLS_ID, SEP_ID

    ids = np.zeros((padded_rows, seq_len), dtype=np.int32)
    mask = np.zeros((padded_rows, seq_len), dtype=np.int32)
    types = np.zeros((padded_rows, seq_len), dtype=np.int32)
    for i, row in enumerate(rows):
        n = min(row.n_tokens, seq_len)
        ids[i, :n] = row.input_ids[:n]
        mask[i, :n] = 1
        types[i, :n] = row.token_type_ids[:n]
    if padded_rows > len(rows):
        ids[len(rows) :, 0], ids[len(rows) :, 1] = CLS_ID, SEP_ID
        mask[len(rows) :, :2] = 1
    return ids, mask, types


def _rows_from_encoding(encoded: Any) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Split a padded encoder output into per-row (ids, type ids, truncated) views."""
    out = []
    lengths = encoded.lengths
    for i in range(len(lengths)):
        n = int(lengths[i])
        out.append(
            (
                encoded.input_ids[i, :n],
                encoded.token_type_ids[i, :n],
                bool(encoded.truncated[i]),
            )
        )
    return out


@dataclass
class PathHandler:
    """Base for the two paths: topics, task and the result builder."""

    name: PathName
    task: Task
    source_topic: str
    result_topic: str
    model: ModelInfo
    encoder: EncoderLike
    settings: Settings
    schema: str = field(default="")

    def decode(self, raw: bytes) -> QueryEvent | ProductPairEvent:
        """Decode and validate one record; raises DecodeError."""
        raise NotImplementedError

    def tokenize(self, events: list[Any]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """Token ids for a chunk of events, one tokenizer call."""
        raise NotImplementedError

    def results(self, rows: Sequence[Row], scores: np.ndarray) -> list[bytes | EncodeError]:
        """Encoded result per row, or the EncodeError (e.g. NaN score) that sends it to the DLQ."""
        raise NotImplementedError


class IntentHandler(PathHandler):
    """Query -> intent label with confidence and top-k scores."""

    def decode(self, raw: bytes) -> QueryEvent:
        return codec.decode_query(raw, max_query_chars=self.settings.max_query_chars)

    def tokenize(self, events: list[Any]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        return _rows_from_encoding(self.encoder.encode_queries([e.query for e in events]))

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
        return out


class DuplicateHandler(PathHandler):
    """Product pair -> customer-perceived duplicate probability and decision."""

    def decode(self, raw: bytes) -> ProductPairEvent:
        return codec.decode_pair(raw)

    def tokenize(self, events: list[Any]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        return _rows_from_encoding(
            self.encoder.encode_products(
                [product_fields(e.left) for e in events], [product_fields(e.right) for e in events]
            )
        )

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
        return out


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
    }


def make_handlers(settings: Settings, model: ModelInfo, encoder: EncoderLike) -> list[PathHandler]:
    """One handler per path enabled in settings."""
    handlers: list[PathHandler] = []
    if PathName.INTENT in settings.paths:
        handlers.append(
            IntentHandler(
                PathName.INTENT,
                Task.INTENT,
                settings.topic_queries,
                settings.topic_intents,
                model,
                encoder,
                settings,
            )
        )
    if PathName.DUPLICATE in settings.paths:
        handlers.append(
            DuplicateHandler(
                PathName.DUPLICATE,
                Task.DUPLICATE,
                settings.topic_pairs,
                settings.topic_duplicates,
                model,
                encoder,
                settings,
            )
        )
    return handlers
