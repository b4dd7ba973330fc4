"""Record value objects: what flows in from Kafka, what flows out, and what goes to the DLQ.

Field meanings and bounds are defined once, in the JSON Schema files under `schemas/`; these
classes mirror them. They are frozen (shared across stages without defensive copies) and slotted
(hundreds of thousands live at once under load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streamer.errors import ErrorCode

# The `schema` field carried by every output record: downstream branches on it.
INTENT_RESULT_SCHEMA = "search.query-intent.v1"
DUPLICATE_RESULT_SCHEMA = "search.product-duplicate.v1"
DEAD_LETTER_SCHEMA = "search.streamer.dead-letter.v1"

# Raw record bytes over this are rejected before parsing (RECORD_TOO_LARGE). Half of Kafka's
# default 1 MiB message size, so an oversized record can still travel through a default broker
# and its dead letter (payload base64-encoded: x4/3) still fits one message too.
MAX_RECORD_BYTES = 512 * 1024
DLQ_MAX_PAYLOAD_BYTES = MAX_RECORD_BYTES


@dataclass(frozen=True, slots=True)
class QueryEvent:
    """One search query to classify (topic `search.queries.v1`)."""

    event_id: str
    query: str
    """Stripped of surrounding whitespace; cut to the codec's max chars when `truncated`."""
    ts_ms: int | None = None
    """Event time, epoch millis; None means "use the Kafka record timestamp"."""
    locale: str | None = None
    session_id: str | None = None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Product:
    """One side of a product pair: the attributes the duplicate model reads."""

    id: str
    title: str
    brand: str | None = None
    product_type: str | None = None
    description: str | None = None
    price: float | None = None
    model_number: str | None = None
    """Manufacturer model number (MPN); optional."""


@dataclass(frozen=True, slots=True)
class ProductPairEvent:
    """Two products to score as customer-perceived duplicates (topic `search.product-pairs.v1`)."""

    event_id: str
    left: Product
    right: Product
    ts_ms: int | None = None
    truncated: bool = False
    """True when any text field of either product was cut to the codec's max chars."""


@dataclass(frozen=True, slots=True)
class IntentResult:
    """The intent of one query (topic `search.query-intents.v1`, keyed by event id)."""

    event_id: str
    intent: str
    confidence: float
    scores: Mapping[str, float]
    """Label -> probability; may hold only the top-k labels."""
    model: str
    model_version: str
    source_ts_ms: int | None
    """Event time of the source event (its `ts_ms`, else the Kafka timestamp); None if unknown."""
    processed_ts_ms: int
    truncated: bool = False
    schema: str = INTENT_RESULT_SCHEMA


@dataclass(frozen=True, slots=True)
class DuplicateResult:
    """The duplicate score of one product pair (topic `search.product-duplicates.v1`)."""

    event_id: str
    left_id: str
    right_id: str
    score: float
    is_duplicate: bool
    threshold: float
    model: str
    model_version: str
    source_ts_ms: int | None
    processed_ts_ms: int
    truncated: bool = False
    schema: str = DUPLICATE_RESULT_SCHEMA


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the service could not process, with everything needed to find and replay it."""

    error_code: ErrorCode
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int | None
    payload: bytes
    """The raw record value (base64 on the wire), cut to `DLQ_MAX_PAYLOAD_BYTES` if too large."""
    key: bytes | None
    service: str
    dlq_ts_ms: int
    payload_truncated: bool = False
    event_id: str | None = None
    """Known when the failure came after decoding (e.g. MODEL_ERROR)."""
    schema: str = DEAD_LETTER_SCHEMA
    source_offset_end: int | None = None
    """UNREADABLE_BATCH only: the letter stands for source_offset .. source_offset_end - 1."""

    @classmethod
    def for_record(
        cls,
        error_code: ErrorCode,
        reason: str,
        *,
        source_topic: str,
        source_partition: int,
        source_offset: int,
        source_timestamp_ms: int | None,
        payload: bytes | None,
        key: bytes | None,
        service: str,
        dlq_ts_ms: int,
        event_id: str | None = None,
        source_offset_end: int | None = None,
    ) -> DeadLetter:
        """Build a dead letter for any failure, keeping the payload whole when it fits.

        The DLQ record must itself fit a default broker (1 MiB messages) after base64 (4/3),
        so payloads over `DLQ_MAX_PAYLOAD_BYTES` keep their head and set `payload_truncated`;
        the source coordinates still locate the full original.
        """
        raw = b"" if payload is None else bytes(payload)
        cut = len(raw) > DLQ_MAX_PAYLOAD_BYTES
        if cut:
            reason = f"{reason} (payload was {len(raw)} bytes; first {DLQ_MAX_PAYLOAD_BYTES} kept)"
            raw = raw[:DLQ_MAX_PAYLOAD_BYTES]
        return cls(
            error_code=error_code,
            reason=reason,
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            source_timestamp_ms=source_timestamp_ms,
            payload=raw,
            key=None if key is None else bytes(key),
            service=service,
            dlq_ts_ms=dlq_ts_ms,
            payload_truncated=cut,
            event_id=event_id,
            source_offset_end=source_offset_end,
        )
