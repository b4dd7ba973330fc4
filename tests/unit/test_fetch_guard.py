"""The fetch guard on aiokafka's real record classes: an unreadable batch ends its partition's
records (everything before it returned), pauses the partition and files a report; the other
partitions and the position are untouched. Also pins the aiokafka internals the guard uses."""

from __future__ import annotations

import aiokafka.codec
import aiokafka.errors
import pytest
from aiokafka.consumer import fetcher
from aiokafka.consumer.subscription_state import Assignment
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streamer.kafka import fetch_guard

TP = TopicPartition("t", 0)
GZIP, LZ4 = 1, 3


def _batch(base: int, n: int, codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for i in range(n):
        builder.append(i, timestamp=1_700_000_000_000, key=None, value=b"v%d" % (base + i),
                       headers=[])  # fmt: skip
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big")  # base offset lives outside the CRC
    return bytes(raw)


def _records(
    raw: bytes, fetch_offset: int = 0, tp: TopicPartition = TP
) -> fetch_guard.GuardedPartitionRecords:
    return fetch_guard.GuardedPartitionRecords(
        tp, MemoryRecords(raw), [], fetch_offset, None, None, True, 0
    )


@pytest.fixture
def no_lz4(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client without the lz4 library (what the service was before cramjam)."""
    monkeypatch.setattr(aiokafka.codec, "has_lz4", lambda: False)


# Built while the codec is there; read below by a client without it.
PLAIN_LZ4_PLAIN = _batch(0, 5) + _batch(5, 5, LZ4) + _batch(10, 5)
PLAIN_LZ4 = _batch(0, 2) + _batch(2, 3, LZ4)


def test_records_before_the_bad_batch_are_returned_then_it_is_reported(no_lz4: None) -> None:
    records = _records(PLAIN_LZ4_PLAIN)
    got = [r.offset for r in records]
    assert got == [0, 1, 2, 3, 4]
    assert records.next_fetch_offset == 5
    bad = records.unreadable
    assert bad is not None
    assert (bad.tp, bad.first_offset, bad.next_offset, bad.reason) == (TP, 5, 10, "codec")
    assert "lz4" in bad.error


def test_every_codec_reads_with_the_locked_libraries() -> None:
    for codec in (0, GZIP, 2, LZ4, 4):  # none, gzip, snappy, lz4, zstd
        records = _records(_batch(0, 3, codec) + _batch(3, 3, codec))
        assert [r.value for r in records] == [b"v0", b"v1", b"v2", b"v3", b"v4", b"v5"]
        assert records.unreadable is None


def test_a_crc_mismatch_is_reported_as_crc() -> None:
    bad = bytearray(_batch(3, 4, GZIP))
    bad[-1] ^= 0xFF  # inside the CRC-covered compressed payload
    records = _records(_batch(0, 3) + bytes(bad))
    assert [r.offset for r in records] == [0, 1, 2]
    assert records.unreadable is not None
    assert (records.unreadable.first_offset, records.unreadable.next_offset) == (3, 7)
    assert records.unreadable.reason == "crc"


async def test_fetch_result_pauses_the_partition_and_files_one_report(no_lz4: None) -> None:
    assignment = Assignment([TP])
    state = assignment.state_value(TP)
    state.seek(0)
    result = fetch_guard.GuardedFetchResult(
        TP, assignment=assignment, partition_records=_records(PLAIN_LZ4),
        backoff=0,
    )  # fmt: skip
    before = fetch_guard.reports.count
    assert [m.offset for m in result.getall(100)] == [0, 1]
    assert state.position == 2  # right at the bad batch: nothing skipped
    assert state.paused
    assert fetch_guard.reports.count == before + 1

    class _Consumer:  # the one attribute path take_unreadable reads (pinned below)
        class _subscription:
            class subscription:
                pass

    _Consumer._subscription.subscription.assignment = assignment  # type: ignore[attr-defined]
    (bad,) = fetch_guard.take_unreadable(_Consumer(), [TP])
    assert (bad.first_offset, bad.next_offset, bad.reason) == (2, 5, "codec")
    assert fetch_guard.take_unreadable(_Consumer(), [TP]) == []  # once


def test_install_replaces_aiokafka_classes() -> None:
    fetch_guard.install()
    assert fetcher.PartitionRecords is fetch_guard.GuardedPartitionRecords
    assert fetcher.FetchResult is fetch_guard.GuardedFetchResult


def test_aiokafka_internals_the_guard_relies_on() -> None:
    """If an aiokafka upgrade changes these, the guard must be revisited (not silently off)."""
    import inspect

    from aiokafka import AIOKafkaConsumer

    src = inspect.getsource(fetcher.Fetcher._proc_fetch_request)
    assert "PartitionRecords(" in src and "FetchResult(" in src
    base = fetch_guard.GuardedPartitionRecords.__bases__[0]
    assert "records = self._records" in inspect.getsource(base._unpack_records)
    assert "_subscription = SubscriptionState" in inspect.getsource(AIOKafkaConsumer.__init__)


async def test_without_the_guard_one_bad_batch_drops_another_partitions_records(
    no_lz4: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the guard exists (aiokafka 0.14's own classes): partition A's records, taken in the
    same getmany() before partition B's bad batch raised, are lost with the exception, while
    A's position has moved past them: the consumer never sees them again."""
    base_records = fetch_guard.GuardedPartitionRecords.__bases__[0]
    base_result = fetch_guard.GuardedFetchResult.__bases__[0]
    monkeypatch.setattr(fetcher, "FetchResult", base_result)  # as if install() never ran
    tp_a, tp_b = TopicPartition("t", 1), TP
    assignment = Assignment([tp_a, tp_b])
    for tp in (tp_a, tp_b):
        assignment.state_value(tp).seek(0)

    def result(tp: TopicPartition, raw: bytes) -> object:
        return base_result(
            tp, assignment=assignment, backoff=0,
            partition_records=base_records(tp, MemoryRecords(raw), [], 0, None, None, True, 0),
        )  # fmt: skip

    fetch = fetcher.Fetcher.__new__(fetcher.Fetcher)  # only what fetched_records() reads
    fetch._records = {tp_a: result(tp_a, _batch(0, 3)), tp_b: result(tp_b, PLAIN_LZ4)}
    fetch._subscriptions = type("S", (), {"reassignment_in_progress": False})()
    fetch._wait_consume_future = None
    with pytest.raises(aiokafka.errors.UnsupportedCodecError):
        await fetch.fetched_records((), timeout=0)
    assert assignment.state_value(tp_a).position == 3  # A's 3 records: passed, never returned
    assert tp_a not in fetch._records


async def test_with_the_guard_the_same_fetch_returns_both_partitions(
    no_lz4: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same getmany() as above, guarded: A's records and B's records before the bad batch
    come back, B is paused at the batch with a report, nothing raises."""
    monkeypatch.setattr(fetcher, "FetchResult", fetch_guard.GuardedFetchResult)
    tp_a, tp_b = TopicPartition("t", 1), TP
    assignment = Assignment([tp_a, tp_b])
    for tp in (tp_a, tp_b):
        assignment.state_value(tp).seek(0)

    def result(tp: TopicPartition, raw: bytes) -> object:
        return fetch_guard.GuardedFetchResult(
            tp, assignment=assignment, backoff=0, partition_records=_records(raw, tp=tp)
        )

    fetch = fetcher.Fetcher.__new__(fetcher.Fetcher)
    fetch._records = {tp_a: result(tp_a, _batch(0, 3)), tp_b: result(tp_b, PLAIN_LZ4)}
    fetch._subscriptions = type("S", (), {"reassignment_in_progress": False})()
    fetch._wait_consume_future = None
    got = await fetch.fetched_records((), timeout=0)
    assert {tp: [m.offset for m in ms] for tp, ms in got.items()} == {tp_a: [0, 1, 2], tp_b: [0, 1]}
    assert assignment.state_value(tp_b).position == 2 and assignment.state_value(tp_b).paused
    assert not assignment.state_value(tp_a).paused
