"""The contenders' shared model job on the tiny model: same records out as the service writes."""

from __future__ import annotations

from pathlib import Path

from streamer.bench.contenders.common import warmup_record
from streamer.bench.contenders.job import ModelJob
from streamer.bench.events import EventFactory
from streamer.records import codec
from streamer.records.samples import BAD_RECORDS


def test_intent_job_answers_every_good_record_and_drops_bad_ones(tiny_cpu_artifact: Path) -> None:
    job = ModelJob.load(tiny_cpu_artifact, "intent", threads=1, force=True)
    job.warm_up(warmup_record("intent"), n=1)
    factory = EventFactory("query")
    n = job.buckets.max_batch + 3  # more than one model call
    good = [(factory(f"e{i}", 1_000 + i, i), 5) for i in range(n)]
    out = job.process([*good, (BAD_RECORDS[0][2], 5)])
    assert [k for k, _ in out] == [f"e{i}".encode() for i in range(n)]
    results = [codec.decode_intent_result(v) for _, v in out]
    assert [r.source_ts_ms for r in results] == [1_000 + i for i in range(n)]
    assert all(0.0 <= r.confidence <= 1.0 for r in results)
    assert job.counters.processed == n and job.counters.rejected == 1
    assert job.counters.batches == 2


def test_pair_job_scores_real_product_pairs(tiny_cpu_artifact: Path) -> None:
    job = ModelJob.load(tiny_cpu_artifact, "duplicate", threads=1, force=True)
    factory = EventFactory("pair")
    out = job.process([(factory(f"p{i}", 7, i), 9) for i in range(5)])
    results = [codec.decode_duplicate_result(v) for _, v in out]
    assert [r.event_id for r in results] == [f"p{i}" for i in range(5)]
    assert all(0.0 <= r.score <= 1.0 and r.source_ts_ms == 7 for r in results)
