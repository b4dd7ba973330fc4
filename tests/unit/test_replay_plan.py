"""The replay's pure parts: range resolution, request parsing, checkpoint metadata, live priority."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.replay.checkpoint import FileCheckpoint, group_id
from streamer.replay.plan import (
    TP,
    PartitionRange,
    PlanError,
    from_metadata,
    parse_offsets,
    parse_partitions,
    parse_time,
    resolve,
    to_metadata,
)
from streamer.replay.throttle import (
    MIN_FACTOR,
    Throttle,
    _Scrape,
    adjust,
    parse_live,
    window_p99,
)

A0, A1, A2 = TP("q", 0), TP("q", 1), TP("q", 2)
BEGIN = {A0: 0, A1: 5, A2: 0}
END = {A0: 100, A1: 5, A2: 40}  # A1 is empty: begin == end


def test_times_parse_as_iso_or_epoch_ms() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000  # naive = UTC
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    with pytest.raises(PlanError, match="neither ISO-8601 nor epoch"):
        parse_time("yesterday")


def test_offsets_parse_from_flags_and_json_files(tmp_path: Path) -> None:
    assert parse_offsets("q:0=10, q:2=7") == {A0: 10, A2: 7}
    assert parse_offsets("my:topic:1=3") == {TP("my:topic", 1): 3}
    f = tmp_path / "offsets.json"
    f.write_text(json.dumps({"q:0": 10, "q:2": 7}))
    assert parse_offsets(str(f)) == {A0: 10, A2: 7}
    for bad in ("q:0", "q=1", "q:x=1", "q:0=-1", ":0=1"):
        with pytest.raises(PlanError):
            parse_offsets(bad)
    assert parse_partitions("0, 2") == {0, 2} and parse_partitions(None) is None
    with pytest.raises(PlanError):
        parse_partitions("a")


def test_default_range_is_everything_up_to_the_end_now() -> None:
    plan = resolve([A0, A1, A2], BEGIN, END)
    assert plan == {A0: PartitionRange(0, 100), A1: PartitionRange(5, 5), A2: PartitionRange(0, 40)}
    assert plan[A1].count == 0


def test_times_resolve_per_partition_and_none_means_the_end() -> None:
    # offsets_for_times answers None past the last record (aiokafka #1067): that is the end.
    plan = resolve(
        [A0, A1, A2], BEGIN, END,
        from_times={A0: 20, A1: None, A2: None}, to_times={A0: 60, A1: None, A2: None},
    )  # fmt: skip
    assert plan[A0] == PartitionRange(20, 60)
    assert plan[A1] == PartitionRange(5, 5)
    assert plan[A2] == PartitionRange(40, 40)  # nothing at or after --from: empty


def test_offsets_override_and_are_checked() -> None:
    plan = resolve([A0, A2], BEGIN, END, from_offsets={A0: 10}, to_offsets={A0: 30})
    assert plan[A0] == PartitionRange(10, 30) and plan[A2] == PartitionRange(0, 40)
    with pytest.raises(PlanError, match="out of range"):
        resolve([A0], BEGIN, END, from_offsets={A0: 101})
    with pytest.raises(PlanError, match="after stop"):
        resolve([A0], BEGIN, END, from_offsets={A0: 50}, to_offsets={A0: 10})


@given(
    st.integers(0, 50), st.integers(0, 50), st.one_of(st.none(), st.integers(0, 120)),
    st.one_of(st.none(), st.integers(0, 120)),
)  # fmt: skip
def test_a_resolved_range_always_lies_within_the_partition(
    lo: int, extra: int, start: int | None, stop: int | None
) -> None:
    hi = lo + extra
    try:
        rng = resolve([A0], {A0: lo}, {A0: hi}, from_times={A0: start}, to_times={A0: stop})[A0]
    except PlanError:
        return
    assert lo <= rng.start <= rng.stop <= hi


def test_the_plan_rides_in_commit_metadata_of_its_own_replay_only() -> None:
    rng = PartitionRange(3, 9)
    meta = to_metadata("r1", rng)
    assert from_metadata("r1", meta) == rng
    assert from_metadata("r2", meta) is None
    assert from_metadata("r1", "") is None and from_metadata("r1", "not json") is None
    assert group_id("r1") == "streamer-replay-r1"


def test_file_checkpoint_round_trip_and_refuses_another_replay(tmp_path: Path) -> None:
    from aiokafka import TopicPartition

    path = tmp_path / "ckpt.json"

    async def scenario() -> tuple[dict, dict]:
        first = FileCheckpoint("r1", path)
        await first.write_plan({A0: PartitionRange(0, 10), A2: PartitionRange(5, 8)})
        await first.commit({TopicPartition("q", 0): 4})
        again = FileCheckpoint("r1", path)
        return await again.load({"q"})

    plan, committed = asyncio.run(scenario())
    assert plan == {A0: PartitionRange(0, 10), A2: PartitionRange(5, 8)}
    assert committed == {A0: 4, A2: 5}
    with pytest.raises(ValueError, match="checkpoint of replay 'r1'"):
        asyncio.run(FileCheckpoint("other", path).load({"q"}))


LIVE = """# TYPE streamer_end_to_end_seconds histogram
streamer_end_to_end_seconds_bucket{route="intent",le="0.005"} %d
streamer_end_to_end_seconds_bucket{route="intent",le="0.01"} %d
streamer_end_to_end_seconds_bucket{route="intent",le="0.05"} %d
streamer_end_to_end_seconds_bucket{route="intent",le="+Inf"} %d
streamer_end_to_end_seconds_count{route="intent"} %d
streamer_end_to_end_seconds_sum{route="intent"} 1.0
# TYPE streamer_consumer_lag gauge
streamer_consumer_lag{topic="q",partition="0"} %d
streamer_consumer_lag{topic="q",partition="1"} 3
"""


def test_live_p99_is_judged_on_the_last_interval_only() -> None:
    before = parse_live(LIVE % (100, 100, 100, 100, 100, 0), "intent")
    fast = parse_live(LIVE % (200, 200, 200, 200, 200, 7), "intent")
    slow = parse_live(LIVE % (150, 150, 200, 200, 200, 7), "intent")
    assert fast.lag == 10
    assert window_p99(before, fast) == 0.005
    assert window_p99(before, slow) == 0.05  # half of the interval's records took > 10 ms
    assert window_p99(before, before) is None  # nothing happened: no judgement
    assert window_p99(_Scrape(), _Scrape()) is None


def test_aimd_halves_while_suffering_and_recovers_by_steps() -> None:
    factor = 1.0
    for _ in range(10):
        factor = adjust(factor, suffering=True)
    assert factor == MIN_FACTOR
    factor = adjust(0.5, suffering=False)
    assert factor == pytest.approx(0.6)
    assert adjust(0.95, suffering=False) == 1.0


def test_throttle_is_unlimited_without_a_rate_until_the_live_service_suffers() -> None:
    throttle = Throttle(None)
    assert throttle.effective_rate() is None
    throttle.observed_rate = 400.0
    throttle.factor = 0.5
    assert throttle.effective_rate() == 200.0
    capped = Throttle(100.0)
    capped.factor = 0.001
    assert capped.effective_rate() == 1.0  # never zero: the replay always ends

    async def takes() -> list[int]:
        t = Throttle(1000.0)
        got = [await t.take(1000)]
        t.spend(got[0])
        got.append(await t.take(1000))
        return got

    base = Throttle(None)
    base.observe(400.0)
    base.factor = 0.5
    for _ in range(20):  # throttled seconds run at the throttled rate; they must not move the base
        base.observe(base.effective_rate() or 0.0)
    assert base.effective_rate() == pytest.approx(0.5 * 0.3 * 400.0)
    base.factor = 1.0
    base.observe(400.0)
    assert base.observed_rate > 0.3 * 400.0

    first, second = asyncio.run(takes())
    assert 1 <= first <= 1000 and 1 <= second <= 200  # burst of at most 0.2 s of tokens
