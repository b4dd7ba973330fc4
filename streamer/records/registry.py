"""Confluent Schema Registry wire format: framing, sniffing, schema ids, registered validation.

Many upstream services serialise through a schema registry. Confluent's wire format is one zero
"magic" byte, the schema id as 4 big-endian bytes, then the payload (JSON for the JSON Schema
format, Avro's binary encoding for Avro). Plain JSON never starts with a zero byte (it starts with `{`, whitespace or a BOM), so
the first byte tells the two apart and a topic can carry both while its producers migrate.

Decoding stays synchronous (the intake decodes a fetched chunk in one pass), so everything that
needs the network happens before it: `prepare(messages)` resolves the chunk's unknown schema ids
(one request per new id, cached for the life of the process: ids are immutable in a registry),
and `unwrap(raw)` then strips the frame and validates the payload against the writer's
registered schema without I/O. A registry outage raises `RegistryUnavailableError` from
`prepare`; the intake retries the same chunk with backoff (`prepare_until_ready`) and ingests
nothing meanwhile, so no record is lost or committed, and `available` (behind `/readyz`) is
false until the registry answers again.

Our own records (results, dead letters) are written in the same format: `start()` registers the
project's schemas (`schemas/*.v1.json`) under the subjects the naming strategy gives and keeps
their ids, so framing a result is a 5-byte prefix with no request on the hot path.

Inputs may be JSON Schema or Avro (read with fastavro, then handed to the codec as the same
JSON object: an Avro null is an absent field, since Avro cannot leave one out); a Protobuf
schema id is a dead letter with a reason (`UNKNOWN_SCHEMA`), not a crash. Our own records are
JSON, so their schemas are JSON Schema.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from streamer.errors import DecodeError, ErrorCode
from streamer.records.types import DEAD_LETTER_SCHEMA, DUPLICATE_RESULT_SCHEMA, INTENT_RESULT_SCHEMA

log = logging.getLogger("streamer.registry")

MAGIC_BYTE: Final = 0
_HEADER: Final = struct.Struct(">bI")
HEADER_BYTES: Final = _HEADER.size  # 5
MAX_SCHEMA_ID: Final = 0xFFFFFFFF

# The project's records: registry record name (the records' own `schema` field) -> schema file.
SCHEMA_FILES: Final = {
    INTENT_RESULT_SCHEMA: "intent_result.v1.json",
    DUPLICATE_RESULT_SCHEMA: "duplicate_result.v1.json",
    DEAD_LETTER_SCHEMA: "dead_letter.v1.json",
}


# ---------------------------------------------------------------------------------------------
# framing (pure)


def frame(schema_id: int, payload: bytes) -> bytes:
    """Payload in Confluent's wire format: magic byte 0, 4-byte big-endian id, payload."""
    if not 0 <= schema_id <= MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} outside 0..{MAX_SCHEMA_ID}")
    return _HEADER.pack(MAGIC_BYTE, schema_id) + payload


def is_framed(raw: bytes | bytearray | memoryview | None) -> bool:
    """Whether the value starts with the magic byte (plain JSON never does)."""
    return raw is not None and len(raw) > 0 and raw[0] == MAGIC_BYTE


def split_frame(raw: bytes | bytearray | memoryview) -> tuple[int, bytes] | None:
    """(schema id, payload) of a framed value; None for a plain (unframed) value.

    A value that starts with the magic byte but is shorter than the header cannot be either
    format: it is a `NOT_JSON` decode error, like any other unparseable value.
    """
    if not is_framed(raw):
        return None
    if len(raw) < HEADER_BYTES:
        raise DecodeError(
            ErrorCode.NOT_JSON,
            f"starts with the schema registry magic byte but has {len(raw)} bytes, "
            f"fewer than the {HEADER_BYTES}-byte header",
        )
    _, schema_id = _HEADER.unpack_from(raw)
    return schema_id, bytes(raw[HEADER_BYTES:])


def framed_ids(values: Iterable[bytes | bytearray | memoryview | None]) -> set[int]:
    """The schema ids of the framed values among these (plain and short values skipped)."""
    ids: set[int] = set()
    for raw in values:
        if raw is not None and len(raw) >= HEADER_BYTES and raw[0] == MAGIC_BYTE:
            ids.add(_HEADER.unpack_from(raw)[1])
    return ids


class SubjectStrategy(StrEnum):
    """Confluent's subject name strategies (which subject a topic's schema is registered under)."""

    TOPIC = "topic"
    """`<topic>-value`: one schema lineage per topic (Confluent's default)."""
    RECORD = "record"
    """`<record name>`: one lineage per record type, whatever topic carries it."""
    TOPIC_RECORD = "topic_record"
    """`<topic>-<record name>`: several record types per topic, each with its own lineage."""


def subject_name(strategy: SubjectStrategy | str, topic: str, record_name: str) -> str:
    """The subject under which `record_name` written to `topic` is registered."""
    strategy = SubjectStrategy(strategy)
    if strategy is SubjectStrategy.TOPIC:
        return f"{topic}-value"
    if strategy is SubjectStrategy.RECORD:
        return record_name
    return f"{topic}-{record_name}"


# ---------------------------------------------------------------------------------------------
# the client side


class RegistryUnavailableError(RuntimeError):
    """The registry did not answer (network, timeout, 5xx, auth): retry, never drop a record."""


class RegistryClientLike(Protocol):
    """What this module needs of confluent-kafka's AsyncSchemaRegistryClient."""

    async def get_schema(self, schema_id: int) -> Any: ...
    async def register_schema(self, subject_name: str, schema: Any) -> int: ...


@dataclass(frozen=True)
class _Known:
    """A resolved schema id: a JSON Schema validator, a parsed Avro schema, or why records
    framed with it are dead letters."""

    validator: Any = None
    fast: Any = None  # fastjsonschema's compiled check, for drafts 4 to 7 (see `_fast_check`)
    avro: Any = None
    rejection: str | None = None


SCHEMA_NOT_FOUND: Final = 40403
"""Confluent's error code for an unknown schema id (Apicurio's ccompat API answers the same)."""


def _not_found(exc: BaseException) -> bool:
    """The registry says the id does not exist (permanent: dead-letter, do not retry).

    A bare 404 without the registry's error code (a proxy's page, a wrong path) is not that
    answer: it is treated as an outage, so a misrouted request never dead-letters records.
    """
    return (
        getattr(exc, "http_status_code", None) == 404
        and getattr(exc, "error_code", None) == SCHEMA_NOT_FOUND
    )


def redacted_url(url: str) -> str:
    """The URL(s) without user:password@ (error messages and logs never carry credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        host = split.netloc.rpartition("@")[2]
        parts.append(urlunsplit(split._replace(netloc=host)))
    return ",".join(parts)


def _validator_for(schema: Any, schema_id: int) -> _Known:
    """Build the validator of a registered schema, or the reason it cannot validate records."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    schema_type = (getattr(schema, "schema_type", None) or "AVRO").upper()
    if schema_type not in ("JSON", "AVRO"):
        return _Known(
            rejection=f"schema id {schema_id} is {schema_type}; only JSON Schema and Avro are "
            "supported"
        )
    if getattr(schema, "references", None):
        return _Known(rejection=f"schema id {schema_id} has references; not supported")
    if schema_type == "AVRO":
        return _avro_reader_for(schema, schema_id)
    try:
        document = json.loads(schema.schema_str)
        cls = validator_for(document)
        cls.check_schema(document)
    except (ValueError, TypeError, SchemaError) as exc:
        return _Known(rejection=f"schema id {schema_id} is not a valid JSON Schema: {exc!r}"[:300])
    return _Known(validator=cls(document), fast=_fast_check(document))


_FAST_DRAFTS: Final = frozenset(
    f"http://json-schema.org/draft-0{n}/schema" for n in (4, 6, 7)
)  # fmt: skip


def _fast_check(document: Any) -> Any:
    """fastjsonschema's compiled validator when the schema names draft 4, 6 or 7, else None.

    jsonschema costs about 30 us per query event, 15 times the codec's own checks; the
    compiled form about 1.5 us. fastjsonschema implements drafts 4 to 7 only, so a 2019-09 or
    2020-12 schema (or one naming no draft, which jsonschema reads as the latest) keeps the
    slower, complete validator. A failure is re-explained by jsonschema (the cold path), so the
    dead letter's reason is the same whichever validator found it.
    """
    draft = document.get("$schema") if isinstance(document, dict) else None
    if not isinstance(draft, str) or draft.rstrip("#") not in _FAST_DRAFTS:
        return None
    import fastjsonschema

    try:
        return fastjsonschema.compile(document)
    except Exception:  # a construct it cannot compile: the complete validator serves
        return None


def _avro_reader_for(schema: Any, schema_id: int) -> _Known:
    """fastavro's parsed form of a registered Avro schema (the writer's, as Avro requires)."""
    import fastavro

    try:
        parsed = fastavro.parse_schema(json.loads(schema.schema_str))
    except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
        return _Known(rejection=f"schema id {schema_id} is not a valid Avro schema: {exc!r}"[:300])
    return _Known(avro=parsed)


def _without_nulls(value: Any) -> Any:
    """An Avro datum as the JSON the codec reads: Avro cannot omit a field, so its nulls
    (optional fields left empty) become absent fields."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _avro_to_json(known: _Known, schema_id: int, payload: bytes) -> bytes:
    """Decode an Avro payload with its writer's schema and re-encode it as JSON."""
    import io

    import fastavro

    try:
        datum = fastavro.schemaless_reader(io.BytesIO(payload), known.avro, None)
    except Exception as exc:  # fastavro raises many types on corrupt input (EOF, struct, ...)
        raise DecodeError(
            ErrorCode.SCHEMA_VIOLATION,
            f"not Avro of registered schema id {schema_id}: {type(exc).__name__}",
        ) from None
    try:
        return orjson.dumps(_without_nulls(datum))
    except TypeError:
        raise DecodeError(
            ErrorCode.SCHEMA_VIOLATION,
            f"Avro of schema id {schema_id} holds a value with no JSON form (bytes, decimal)",
        ) from None


class SchemaRegistry:
    """Schema ids in and out: resolves and caches writers' schemas, frames our own records."""

    def __init__(
        self,
        client: RegistryClientLike,
        *,
        url: str,
        strategy: SubjectStrategy | str,
        result_topics: Mapping[str, str],
        dlq_topic: str,
        schemas_dir: Path,
        backoff_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        """`result_topics`: result topic -> record name written there (see `SCHEMA_FILES`)."""
        self._client = client
        self.url = redacted_url(url)
        self.strategy = SubjectStrategy(strategy)
        self._outputs = {**result_topics, dlq_topic: DEAD_LETTER_SCHEMA}
        self._dlq_topic = dlq_topic
        self._schemas_dir = schemas_dir
        self._backoff_s = backoff_s
        self._known: dict[int, _Known] = {}
        self._out_ids: dict[str, int] = {}
        self.available = True
        self.outages = 0

    # ------------------------------------------------------------------ start-up
    async def start(self) -> dict[str, int]:
        """Register our result and dead-letter schemas; topic -> schema id.

        Raises RegistryUnavailableError saying which subject failed and why: the service does
        not start writing records it could not frame.
        """
        from confluent_kafka.schema_registry import Schema

        for topic, record in sorted(self._outputs.items()):
            subject = subject_name(self.strategy, topic, record)
            text = (self._schemas_dir / SCHEMA_FILES[record]).read_text()
            try:
                schema_id = await self._client.register_schema(subject, Schema(text, "JSON"))
            except Exception as exc:
                raise RegistryUnavailableError(
                    f"schema registry at {self.url}: registering subject {subject!r} failed: "
                    f"{exc!r}"
                ) from exc
            self._out_ids[topic] = int(schema_id)
        log.info(
            "schemas registered",
            extra={"event": "registry_started", "strategy": str(self.strategy),
                   "ids": dict(self._out_ids)},
        )  # fmt: skip
        return dict(self._out_ids)

    async def close(self) -> None:
        """Close the HTTP client (if it has one to close)."""
        aclose = getattr(self._client, "aclose", None)
        if aclose is not None:
            await aclose()

    # ------------------------------------------------------------------ input
    async def prepare(self, values: Iterable[bytes | bytearray | memoryview | None]) -> None:
        """Resolve the unknown schema ids among these values (one request per new id).

        An id the registry does not have is remembered as a rejection (its records become
        `UNKNOWN_SCHEMA` dead letters); any other failure raises RegistryUnavailableError and
        leaves the id unresolved, so nothing is decided while the registry is away.
        """
        missing = framed_ids(values) - self._known.keys()
        for schema_id in sorted(missing):
            try:
                schema = await self._client.get_schema(schema_id)
            except Exception as exc:
                if _not_found(exc):
                    self._known[schema_id] = _Known(
                        rejection=f"schema id {schema_id} is not in the registry"
                    )
                    continue
                raise RegistryUnavailableError(
                    f"schema registry at {self.url}: schema id {schema_id}: {exc!r}"
                ) from exc
            self._known[schema_id] = _validator_for(schema, schema_id)
        self.available = True

    async def prepare_until_ready(
        self, values: Iterable[bytes | bytearray | memoryview | None], stopping: asyncio.Event
    ) -> bool:
        """`prepare`, retried with exponential backoff until it succeeds (True) or the service
        stops (False: the caller must not ingest the chunk; uncommitted, the next owner reads
        it). `available` is false from the first failure until a success."""
        values = list(values)
        delay, ceiling = self._backoff_s
        while True:
            try:
                await self.prepare(values)
                return True
            except RegistryUnavailableError as exc:
                if self.available:
                    self.outages += 1
                    log.warning(
                        "schema registry unavailable: holding the fetched records",
                        extra={"event": "registry_unavailable", "error": str(exc)},
                    )
                self.available = False
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay)
                return False
            except TimeoutError:
                delay = min(ceiling, delay * 2)

    def unwrap(self, raw: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """The JSON payload of a value: a plain value as is, a framed one validated against its
        writer's registered schema (resolved by `prepare`), an Avro one decoded with it and
        re-encoded as JSON. Raises DecodeError."""
        split = split_frame(raw)
        if split is None:
            return raw
        schema_id, payload = split
        known = self._known.get(schema_id)
        if known is None:  # `prepare` was not awaited for this value: a wiring bug, say so
            raise DecodeError(ErrorCode.UNKNOWN_SCHEMA, f"schema id {schema_id} not resolved")
        if known.rejection is not None:
            raise DecodeError(ErrorCode.UNKNOWN_SCHEMA, known.rejection)
        if known.avro is not None:
            return _avro_to_json(known, schema_id, payload)
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload  # the codec classifies it (NOT_JSON, INVALID_UTF8) with its reason
        if known.fast is not None and _passes(known.fast, document):
            return payload
        error = next(iter(known.validator.iter_errors(document)), None)
        if error is not None:
            # The keyword and the path, never the value (dead letters are read by people).
            raise DecodeError(
                ErrorCode.SCHEMA_VIOLATION,
                f"does not match registered schema id {schema_id}: at {error.json_path} "
                f"'{error.validator}' fails",
            )
        return payload

    # ------------------------------------------------------------------ output
    def schema_id(self, topic: str) -> int:
        """Our registered schema id for records written to `topic` (after `start`)."""
        try:
            return self._out_ids[topic]
        except KeyError:
            raise RuntimeError(f"no schema registered for {topic!r}: start() first") from None

    def frame_for(self, topic: str, payload: bytes) -> bytes:
        """A result or dead letter for `topic` in wire format, with our registered schema id."""
        return frame(self.schema_id(topic), payload)

    def frame_dead_letter(self, payload: bytes) -> bytes:
        """A dead letter in wire format (the DLQ topic's schema id)."""
        return frame(self.schema_id(self._dlq_topic), payload)


def _passes(check: Any, document: Any) -> bool:
    """Whether a fastjsonschema check accepts the document (False: ask jsonschema why).

    Its JsonSchemaException is a ValueError; catching that keeps the hot path import-free.
    """
    try:
        check(document)
    except ValueError:
        return False
    return True


def make_client_config(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """confluent-kafka's AsyncSchemaRegistryClient configuration from our settings.

    One quick retry inside the client; longer outages are the intake's backoff loop, which
    keeps readiness false meanwhile instead of blocking inside one request.
    """
    conf: dict[str, Any] = {
        "url": url,
        "timeout": timeout_s,
        "max.retries": 1,
        "retries.wait.ms": 100,
        "retries.max.wait.ms": 500,
    }
    if username is not None:
        conf["basic.auth.user.info"] = f"{username}:{password or ''}"
    if ca_file is not None:
        conf["ssl.ca.location"] = str(ca_file)
    return conf
