"""Typed, bounded settings: the one module that reads environment variables.

Precedence (highest first): command-line flags, `STREAMER_*` environment variables, the TOML
file given with `--config`, the defaults below. Secrets are `SecretStr` so they never appear in
logs or reprs.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Route(StrEnum):
    """The two inference routes of DESIGN.md section 1 (source topic -> model head -> results)."""

    INTENT = "intent"
    DUPLICATE = "duplicate"


class Settings(BaseSettings):
    """Everything `streamer run` can be told; each field documents its unit and why."""

    model_config = SettingsConfigDict(env_prefix="STREAMER_", extra="forbid", frozen=True)

    # --- Kafka -------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "bootstrap_servers", "STREAMER_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
        description="Kafka bootstrap servers, comma separated.",
    )
    # --- Kafka security (TLS, SASL); clients are built from these in streamer/kafka/clients.py
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # AWS_MSK_IAM is SASL/OAUTHBEARER with a token signed from the AWS credentials (the `msk`
    # extra: aws-msk-iam-sasl-signer-python); the others are Kafka's own mechanisms.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA(s) that sign the brokers' certificates; unset: the "
        "system's trusted CAs.",
    )
    ssl_certfile: Path | None = Field(
        None, description="PEM client certificate (mTLS); may also hold the key."
    )
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile.")
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = Field(
        True, description="The broker's certificate must name the host connected to."
    )
    aws_region: str | None = Field(
        None, pattern=r"^[a-z0-9-]+$", description="AWS region of the MSK cluster (AWS_MSK_IAM)."
    )
    # --- end of Kafka security

    group_id: str = Field("streamer", min_length=1, description="Consumer group of the service.")
    client_id: str = Field("streamer", min_length=1)
    # Static membership (KIP-345): an instance that comes back with the same id within
    # session_timeout_ms gets its partitions back without a rebalance of the others. It never
    # sends LeaveGroup, so a gone instance's partitions wait out the session timeout.
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Static group member id, stable across restarts of one instance (the pod "
        "name of a StatefulSet); unset: dynamic membership.",
    )

    topic_queries: str = "search.queries.v1"
    topic_pairs: str = "search.product-pairs.v1"
    topic_intents: str = "search.query-intents.v1"
    topic_duplicates: str = "search.product-duplicates.v1"
    topic_dlq: str = "search.streamer.dlq.v1"

    # NoDecode: env values are 'intent,duplicate', not JSON; the validator below splits them.
    routes: Annotated[tuple[Route, ...], NoDecode] = Field(
        (Route.INTENT, Route.DUPLICATE),
        # STREAMER_PATHS / `paths`: the name before 0.2, still accepted.
        validation_alias=AliasChoices("routes", "STREAMER_ROUTES", "paths", "STREAMER_PATHS"),
        description="Which routes this process serves: 'intent', 'duplicate' or both (comma list).",
    )

    # aiokafka's default fetch_max_wait_ms=500 alone gave p50 250 ms on an idle stream
    # (DESIGN.md section 3); a few ms keeps an idle partition from holding the fetch.
    fetch_max_wait_ms: int = Field(5, ge=0, le=500)
    max_poll_records: int = Field(1024, ge=1, le=100_000)
    max_partition_fetch_bytes: int = Field(1 << 20, ge=1024)
    # --- A batch the consumer cannot read (streamer/kafka/fetch_guard.py) ----------------
    unreadable_batch_policy: Literal["hold", "skip"] = Field(
        "hold",
        description="A record batch that cannot be read (a codec without its library, a CRC "
        "mismatch, corrupt data) stops only its own partition. hold: the partition waits at "
        "the batch, retried with back-off, visible in metrics, logs and /readyz; nothing is "
        "skipped without an operator's say. skip: one UNREADABLE_BATCH dead letter names the "
        "offset range and reason, and the partition reads on after it.",
    )
    unreadable_retry_s: float = Field(
        5.0, gt=0, le=3600, description="hold: first re-read of a held batch (doubles to 60 s)."
    )
    unreadable_ready_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="hold: /readyz answers 503, naming the partition, once a partition has been "
        "held this long (0: at once).",
    )
    # --- end of unreadable batches
    # One round trip of a commit costs about what a batch does; commit on a timer, not per
    # record (a commit per message capped a naive consumer at ~130 events/s).
    commit_interval_ms: int = Field(200, ge=10, le=60_000)
    # 0: send as soon as the sender is free; under load records still batch while a request
    # is in flight, so latency pays nothing at low rates and throughput little at high ones.
    producer_linger_ms: int = Field(0, ge=0, le=1000)
    # Codec of the results and dead letters the service produces (what the broker stores and
    # every downstream reader decodes). Inputs in any codec are read regardless. zstd: in
    # same-run A/Bs no codec moved P99 or CPU per event beyond run-to-run noise (real model
    # 50/s; emulated H200 500-3,000/s), and zstd stores a result batch in the fewest bytes
    # (33% of uncompressed at 4 records, 16% at 256) for 1.5-6 us of CPU per record
    # (BENCHMARKS.md, "Result codecs"). Readers need a Kafka 2.1+ client.
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "zstd",
        description="Compression of result and dead-letter batches: none, gzip, snappy, lz4 "
        "or zstd (the default; readers need a Kafka 2.1+ client, else choose lz4 or none).",
    )
    producer_idempotence: bool = Field(
        True,
        description="Idempotent producer (no duplicates from retries); off only for brokers "
        "that lack it (the Tansu broker on the GPU benchmark machine).",
    )
    session_timeout_ms: int = Field(10_000, ge=1000)
    # --- Delivery guarantee (streamer/pipeline/exactly_once.py) ------------------------
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once",
        description="at-least-once: results are acknowledged, then offsets committed (a crash "
        "may answer a record twice, never zero times). exactly-once: each input partition's "
        "results, dead letters and offset commit in one Kafka transaction; downstream must read "
        "with isolation_level=read_committed and sees results only when their transaction "
        "commits (every transaction_interval_ms).",
    )
    # Kafka Streams commits exactly-once transactions every 100 ms by default. Here it is the
    # latency exactly-once adds: results become visible when their transaction commits
    # (BENCHMARKS.md, "Exactly-once vs at-least-once", measures it per interval).
    transaction_interval_ms: int = Field(
        100,
        ge=10,
        le=60_000,
        description="exactly-once: how often each input partition's open transaction commits.",
    )
    # The broker aborts a transaction left open longer (and fences its producer). Short, as in
    # Kafka Streams (10 s): a crashed instance's open transactions hold read_committed
    # consumers of the result partitions back until then, unless a new owner aborts them first.
    transaction_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        le=900_000,
        description="exactly-once: broker-side timeout of a transaction (transaction.timeout.ms); "
        "at most the broker's transaction.max.timeout.ms (15 min by default).",
    )
    heartbeat_interval_ms: int = Field(1_000, ge=100)

    # --- Model and workers -------------------------------------------------------------
    artifact: Path | None = Field(None, description="Compiled artifact directory (compile/).")
    executor: Literal["auto", "multiproc", "inprocess"] = Field(
        "auto",
        description="Where the model runs: 'multiproc' (a worker process per device core, fed "
        "over shared memory), 'inprocess' (a runner thread in this process; ONNX Runtime "
        "releases the GIL), 'auto' (the measured default per target: app.AUTO_EXECUTOR).",
    )
    workers: int | None = Field(None, ge=1, le=256, description="Worker processes; auto if unset.")
    threads_per_worker: int | None = Field(None, ge=1, le=256)
    slots_per_worker: int = Field(2, ge=1, le=16, description="Batches queued per worker.")
    worker_heartbeat_timeout_s: float = Field(30.0, gt=0)
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Lower this service's CPU priority (its workers inherit it) by this much. "
        "For a service that must yield its cores to others on the machine.",
    )
    gc_freeze: bool = Field(
        True,
        description="After start-up, collect once and freeze what start-up allocated "
        "(gc.freeze), so the collector's full passes never rescan the model, tokenizer and "
        "client objects on the event loop.",
    )
    force_artifact: bool = Field(False, description="Load an artifact whose parity failed.")
    variant: str | None = Field(
        None, description="Artifact variant (cpu: 'int8' or 'fp32'); default: the manifest's."
    )
    emulate: Literal["h200", "inf2"] | None = Field(
        None,
        description="Serve through an EMULATED accelerator instead of the model: each batch "
        "waits the device's measured latency for its shape (no CPU) and answers a "
        "deterministic function of its tokens. For measuring the host path; labelled as "
        "emulation everywhere.",
    )

    # --- Latency budget, batching and backpressure ---------------------------------------
    p99_target_ms: float = Field(10.0, gt=0, le=60_000, description="End-to-end P99 target.")
    intent_max_batch: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Rows per intent batch; default per target (cpu 4, else 32).",
    )
    intent_max_linger_ms: float = Field(2.0, ge=0, le=1000)
    cpu_intent_seq_step: int = Field(
        4,
        ge=0,
        le=64,
        description="cpu target: an intent batch runs at its longest row's length rounded up "
        "to a multiple of this (ONNX Runtime takes any length), not at the next compiled "
        "bucket (16 or 32); 0: the compiled buckets. A 9-token query then pays for 12 tokens, "
        "not 16.",
    )
    # Off by default: on the 2-core CPU the adaptive linger is already ~0 (the other stages
    # use up the budget), and the same-run A/B in BENCHMARKS.md measured no gain from it.
    # Meant for accelerators, where the linger controller leaves budget to wait in.
    dispatch_when_idle: bool = Field(
        False,
        description="A free worker takes the open batch at once instead of waiting out the "
        "linger (batches still grow while workers are busy). Off: batches close only by "
        "size, token budget or linger.",
    )
    intent_target_tps: float | None = Field(
        None,
        gt=0,
        description="Expected peak rate; sizes in-flight by Little's law. Default per target: "
        "cpu 400, else 16,000 (the published inf1.6xlarge peak).",
    )
    duplicate_max_batch: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Rows per pair batch; default per target (cpu 8, else 128).",
    )
    duplicate_max_linger_ms: float = Field(50.0, ge=0, le=10_000)
    duplicate_group_by_length: bool = Field(
        True,
        description="Batch pairs with pairs of their own sequence bucket (one open batch per "
        "bucket), so one long pair does not pad the short ones around it.",
    )
    duplicate_p99_target_ms: float = Field(1_000.0, gt=0, le=600_000)
    duplicate_target_tps: float | None = Field(
        None, gt=0, description="Expected pair rate; default per target: cpu 400, else 8,800."
    )

    max_query_chars: int = Field(512, ge=1)
    drain_timeout_s: float = Field(10.0, ge=0, le=600, description="SIGTERM drain deadline.")

    # --- Schema Registry (issue 19; streamer/records/registry.py) --------------------------
    # Confluent wire format (magic byte 0, 4-byte schema id, payload). Unset URL: plain JSON in
    # and out, as before. Set: framed inputs are validated against their writer's registered
    # JSON Schema (plain JSON is still accepted, so producers can migrate one at a time) and
    # results and dead letters are written framed, with our schemas registered at start-up.
    schema_registry_url: str | None = Field(
        None,
        description="Schema Registry base URL(s), comma separated (Confluent-compatible API, "
        "e.g. Apicurio's /apis/ccompat/v7); unset: plain JSON.",
    )
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    schema_registry_cafile: Path | None = Field(
        None, description="PEM CA file for an https registry; unset: the system's trusted CAs."
    )
    schema_registry_subject_strategy: Literal["topic", "record", "topic_record"] = Field(
        "topic",
        description="Subjects of our result and dead-letter schemas: topic (<topic>-value), "
        "record (<record name>) or topic_record (<topic>-<record name>).",
    )
    schema_registry_timeout_s: float = Field(5.0, gt=0, le=120, description="Per request.")
    schema_registry_schemas_dir: Path | None = Field(
        None,
        description="Directory of our schemas/*.v1.json, registered at start-up; unset: the "
        "checkout's schemas/, else /opt/streamer/schemas (the image).",
    )

    @model_validator(mode="after")
    def _check_schema_registry(self) -> Settings:
        """Registry settings that cannot work together (reasons never carry values)."""
        url = self.schema_registry_url
        if url is not None and not all(
            u.strip().startswith(("http://", "https://")) for u in url.split(",")
        ):
            raise ValueError("schema_registry_url: expected http:// or https:// URL(s)")
        if self.schema_registry_password is not None and not self.schema_registry_username:
            raise ValueError("schema_registry_password needs schema_registry_username")
        if self.schema_registry_cafile is not None and not self.schema_registry_cafile.is_file():
            raise ValueError("schema_registry_cafile: no such file")
        schemas = self.schema_registry_schemas_dir
        if schemas is not None and not (schemas / "dead_letter.v1.json").is_file():
            raise ValueError("schema_registry_schemas_dir: no dead_letter.v1.json there")
        return self

    # --- end of Schema Registry

    # --- Observability ------------------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9102, ge=0, le=65535, description="0 disables the HTTP endpoint.")
    group_lag_interval_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="How often the group's committed-offset lag and time lag are sampled "
        "(admin request + one record per lagging partition); 0 disables.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- Trace context and headers (issue 19; publisher.py, tracing.py) -------------------
    # W3C trace context rides in Kafka headers (OpenTelemetry's Kafka propagation): copying it
    # from each input record to its result and dead letter lets a downstream team follow one
    # search request through this service. NoDecode: env values are comma lists, not JSON.
    forward_headers: Annotated[tuple[str, ...], NoDecode] = Field(
        ("traceparent", "tracestate"),
        description="Headers of an input record copied to its result and its dead letter "
        "(comma list of exact, case-sensitive Kafka header names; empty: none). They follow "
        "the service's own headers and never replace one of them.",
    )
    otel_enabled: bool = Field(
        False,
        description="OpenTelemetry spans (the `otel` extra): one span per batch, linked to each "
        "event's traceparent, stage timings as attributes, sent over OTLP/HTTP as the standard "
        "OTEL_* variables say (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...).",
    )

    @field_validator("forward_headers")
    @classmethod
    def _check_header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Header names as tracing and messaging headers spell them; a typo fails at start."""
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", name):
                raise ValueError(
                    f"forward_headers: {name!r} is not a header name (1-255 of letters, "
                    "digits, '.', '_', '-')"
                )
        return tuple(dict.fromkeys(value))

    # --- end of trace context and headers

    @field_validator("routes", "forward_headers", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        """Accept 'intent,duplicate' (or 'traceparent,tracestate') from env vars and flags as
        well as lists from TOML."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        """Reject settings that cannot work together, with a reason."""
        if not self.routes:
            raise ValueError("routes must name at least one of: intent, duplicate")
        if self.delivery == "exactly-once":
            if not self.producer_idempotence:
                raise ValueError("delivery exactly-once needs producer_idempotence")
            if self.transaction_timeout_ms <= 2 * self.transaction_interval_ms:
                raise ValueError("transaction_timeout_ms must exceed twice transaction_interval_ms")
        self._check_security()
        return self

    def _check_security(self) -> None:
        """TLS and SASL settings that cannot work together (reasons never carry values)."""
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        if sasl and not self.sasl_mechanism:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if self.sasl_mechanism and not sasl:
            raise ValueError("sasl_mechanism needs security_protocol SASL_SSL or SASL_PLAINTEXT")
        if self.sasl_mechanism == "AWS_MSK_IAM":
            if self.security_protocol != "SASL_SSL" or not self.aws_region:
                raise ValueError("sasl_mechanism AWS_MSK_IAM needs SASL_SSL and aws_region")
        elif self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError("sasl_mechanism needs sasl_username and sasl_password")
        files = {
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        for name, path in files.items():
            if path is None:
                continue
            if not tls:
                raise ValueError(f"{name} needs security_protocol SSL or SASL_SSL")
            if not path.is_file():
                raise ValueError(f"{name}: no such file")
        if (self.ssl_keyfile or self.ssl_key_password) and not self.ssl_certfile:
            raise ValueError("ssl_keyfile and ssl_key_password need ssl_certfile")

    def kafka_security(self) -> dict[str, Any]:
        """aiokafka's SASL keyword arguments (the password unwrapped here only).

        TLS (the ssl_context) and the MSK token provider are built by
        `streamer.kafka.clients.security_kwargs`, which starts from these.
        """
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism and self.sasl_mechanism != "AWS_MSK_IAM":
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs

    def secrets(self) -> list[str]:
        """The secret values, for redacting any text that leaves the process."""
        return [
            s.get_secret_value()
            for s in (self.sasl_password, self.ssl_key_password, self.schema_registry_password)
            if s is not None and s.get_secret_value()
        ]

    def public_dict(self) -> dict[str, Any]:
        """Settings as JSON-able values for the startup log line (SecretStr stays masked)."""
        return {k: (str(v) if isinstance(v, Path | SecretStr) else v) for k, v in self}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from flags (overrides) > env > TOML file > defaults."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
            return tuple(sources)

    return _FromFile(**overrides)


def repo_root() -> Path:
    """The checkout root (for default data and artifact locations)."""
    return Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Where ../shared/data lives; STREAMER_DATA_DIR overrides."""
    return Path(os.environ.get("STREAMER_DATA_DIR", repo_root().parent / "shared" / "data"))
