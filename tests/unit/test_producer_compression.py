"""`producer_compression`: the codec of results and dead letters, and the benchmark's per-codec
contenders. The broker round trip (and other clients reading what the service writes) is in
tests/integration/test_interop.py; here, the setting's bounds and the batches the service's
producers would put on the wire, built and decoded without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.record.memory_records import MemoryRecords
from pydantic import ValidationError

from streamer.bench.harness import (
    CODECS,
    BenchConfig,
    Topics,
    compression_variants,
    contender_command,
)
from streamer.config import Settings, load_settings
from streamer.kafka.clients import compression_type, make_producer, make_transactional_producer

# The record batch's attributes & 0x07 (Kafka protocol).
CODEC_ID = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def test_default_is_zstd_and_none_is_no_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """zstd by default (chosen by BENCHMARKS.md, "Result codecs"); "none" is aiokafka's None."""
    monkeypatch.delenv("STREAMER_PRODUCER_COMPRESSION", raising=False)
    settings = load_settings()
    assert settings.producer_compression == "zstd"
    assert compression_type(settings) == "zstd"
    assert compression_type(load_settings(producer_compression="none")) is None


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_is_accepted_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    monkeypatch.setenv("STREAMER_PRODUCER_COMPRESSION", codec)
    assert load_settings().producer_compression == codec


@pytest.mark.parametrize("bad", ["brotli", "GZIP", "", "lz4,zstd"])
def test_an_unknown_codec_is_refused_at_start_up(bad: str) -> None:
    with pytest.raises(ValidationError, match="producer_compression"):
        Settings(producer_compression=bad)


async def _wire_batch(producer: object) -> object:
    """Build one batch the way the producer's sender does, and parse it back from bytes."""
    builder = producer.create_batch()  # type: ignore[attr-defined]
    value = b'{"event_id":"e1","intent":"shopping"}' * 20
    assert builder.append(key=b"e1", value=value, timestamp=None) is not None
    batch = MemoryRecords(bytes(builder._build())).next_batch()
    assert batch is not None
    (record,) = list(batch)
    assert record.key == b"e1" and record.value == value  # decodes back, whatever the codec
    return batch


@pytest.mark.parametrize("codec", CODECS)
async def test_results_and_dead_letters_are_written_in_the_configured_codec(codec: str) -> None:
    """Both producers of results and dead letters, at-least-once and transactional, compress
    their batches with the configured codec (so every codec's library is installed too)."""
    settings = Settings(producer_compression=codec)
    plain = make_producer(settings)
    transactional = make_transactional_producer(settings, "streamer-test-0")
    try:
        for producer, in_txn in ((plain, False), (transactional, True)):
            batch = await _wire_batch(producer)
            assert batch.compression_type == CODEC_ID[codec]  # type: ignore[attr-defined]
            assert batch.is_transactional is in_txn  # type: ignore[attr-defined]
    finally:
        await plain.stop()
        await transactional.stop()


def test_the_benchmark_makes_one_service_contender_per_codec(tmp_path: Path) -> None:
    """`--compression none,lz4` runs the service once per codec in the same run."""
    variants = compression_variants("none, lz4,none")
    assert variants == {
        "none": {"STREAMER_PRODUCER_COMPRESSION": "none"},
        "lz4": {"STREAMER_PRODUCER_COMPRESSION": "lz4"},
    }
    cfg = BenchConfig.preset("quick", tmp_path, tmp_path, variants=variants)
    topics = Topics.fresh("r", "streamer-lz4", "intent")
    _, env, port = contender_command("streamer-lz4", cfg, "127.0.0.1:9", "intent", topics, "g")
    assert env["STREAMER_PRODUCER_COMPRESSION"] == "lz4" and port
    for bad in ("", "brotli", "gzip,brotli"):
        with pytest.raises(ValueError, match="--compression"):
            compression_variants(bad)
