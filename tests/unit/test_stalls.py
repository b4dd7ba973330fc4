"""The hold policy's clock: back-off, bounded logging, readiness age (pure, no Kafka)."""

from __future__ import annotations

from streamer.kafka.fetch_guard import UnreadableBatch
from streamer.pipeline.stalls import StalledPartitions

TP = ("t", 0)


def _batch(first: int = 10, tp: object = TP) -> UnreadableBatch:
    return UnreadableBatch(tp, first, first + 5, "codec", "UnsupportedCodecError('lz4')")


def test_first_report_logs_and_schedules_a_retry() -> None:
    stalls = StalledPartitions(retry_s=5, max_retry_s=60, log_every_s=60)
    stall, log_now = stalls.report(_batch(), now=100.0, wall=1e9)
    assert log_now and TP in stalls and stall.since == 100.0
    assert stalls.due(104.9) == []
    assert stalls.due(105.0) == [TP]
    assert stalls.due(106.0) == []  # once, until the retry's outcome is reported


def test_failed_retries_back_off_to_the_cap_and_log_at_a_bounded_rate() -> None:
    stalls = StalledPartitions(retry_s=5, max_retry_s=60, log_every_s=60)
    stalls.report(_batch(), now=0.0, wall=0.0)
    backoffs, logs = [], 0
    now = 0.0
    for _ in range(8):
        now += 10.0
        stall, log_now = stalls.report(_batch(), now=now, wall=now)
        backoffs.append(stall.backoff_s)
        logs += log_now
        assert stall.since == 0.0  # the same stall goes on
    assert backoffs == [10, 20, 40, 60, 60, 60, 60, 60]
    assert logs == 1  # 80 s of retries: one more line after the first, not eight


def test_a_different_batch_is_a_new_stall() -> None:
    stalls = StalledPartitions()
    stalls.report(_batch(10), now=0.0, wall=0.0)
    stall, log_now = stalls.report(_batch(20), now=30.0, wall=30.0)
    assert log_now and stall.since == 30.0 and stall.batch.first_offset == 20


def test_readiness_names_only_stalls_older_than_the_bound() -> None:
    stalls = StalledPartitions()
    stalls.report(_batch(tp=("t", 0)), now=0.0, wall=0.0)
    stalls.report(_batch(tp=("t", 1)), now=50.0, wall=50.0)
    assert [s.batch.tp for s in stalls.older_than(60, now=70.0)] == [("t", 0)]
    assert stalls.clear(("t", 0)) is not None
    assert stalls.older_than(60, now=200.0)[0].batch.tp == ("t", 1)
    assert stalls.clear(("t", 0)) is None
