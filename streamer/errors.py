"""The project's error types: why a record was rejected, as a stable code plus a readable reason."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable machine-readable reason a record went to the dead-letter topic.

    The values are part of the dead-letter record contract (`schemas/dead_letter.v1.json`
    lists them in an enum): add codes, never rename or remove one.
    """

    INVALID_UTF8 = "INVALID_UTF8"
    """The record bytes are not valid UTF-8."""
    NOT_JSON = "NOT_JSON"
    """Valid UTF-8 (or no value at all) but not parseable JSON."""
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    """JSON, but the top level is not an object."""
    MISSING_FIELD = "MISSING_FIELD"
    """A required field is absent."""
    WRONG_TYPE = "WRONG_TYPE"
    """A field has the wrong JSON type (null included where null is not allowed)."""
    EMPTY_TEXT = "EMPTY_TEXT"
    """A text field the model needs is empty or whitespace only."""
    INVALID_VALUE = "INVALID_VALUE"
    """Right type, value out of range (id too long, negative timestamp, ...)."""
    RECORD_TOO_LARGE = "RECORD_TOO_LARGE"
    """Raw record bytes over the hard cap: protects memory; long text is truncated instead."""
    MODEL_ERROR = "MODEL_ERROR"
    """Inference (or encoding its output) failed for this record."""
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    """Schema Registry wire format with a schema id the registry does not have, or whose schema
    is not JSON Schema (streamer/records/registry.py)."""
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    """Schema Registry wire format whose payload does not match its writer's registered schema."""
    TOMBSTONE = "TOMBSTONE"
    """The record has no value (a null value: a compacted topic's delete marker), nothing to
    answer."""
    UNREADABLE_BATCH = "UNREADABLE_BATCH"
    """A record batch the consumer could not read (unknown codec, CRC mismatch, corrupt
    compressed data), skipped by the `skip` policy: source_offset .. source_offset_end - 1."""


class DecodeError(Exception):
    """A record could not be decoded; the only exception the codec's decoders raise."""

    def __init__(self, code: ErrorCode, reason: str, field: str | None = None) -> None:
        super().__init__(code, reason, field)
        self.code = code
        self.reason = reason
        self.field = field

    def __str__(self) -> str:
        return f"{self.code.value}: {self.reason}"


class EncodeError(ValueError):
    """A result could not be encoded (e.g. a NaN score): the record goes to the DLQ instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ArtifactError(Exception):
    """A model artifact is missing, malformed, tampered with, or failed its parity check."""


class BackendUnavailableError(ArtifactError):
    """The artifact's target needs a runtime (torch-neuron, CUDA, ...) this host does not have."""
