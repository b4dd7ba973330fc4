"""OffsetWatermark: commit never passes an unfinished record, never lags the done prefix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.pipeline.offsets import OffsetWatermark

TP = ("search.queries.v1", 0)
TP1 = ("search.queries.v1", 1)


def test_unknown_partition_has_no_commit_point() -> None:
    wm = OffsetWatermark()
    assert wm.commit_point(TP) is None
    assert wm.pending() == 0
    assert wm.advanced() == {}
    assert wm.partitions() == []


def test_out_of_order_completion_holds_at_lowest_pending() -> None:
    wm = OffsetWatermark()
    for offset in (10, 11, 12):
        wm.track(TP, offset)
    assert wm.commit_point(TP) == 10
    assert wm.done(TP, 12)
    assert wm.commit_point(TP) == 10
    assert wm.done(TP, 10)
    assert wm.commit_point(TP) == 11
    assert wm.done(TP, 11)
    assert wm.commit_point(TP) == 13
    assert wm.pending(TP) == 0


def test_gaps_commit_past_offsets_never_fetched() -> None:
    # compaction / transaction markers: 6 and 8..9 do not exist
    wm = OffsetWatermark()
    for offset in (5, 7, 10):
        wm.track(TP, offset)
    wm.done(TP, 5)
    assert wm.commit_point(TP) == 7
    wm.done(TP, 10)
    assert wm.commit_point(TP) == 7
    wm.done(TP, 7)
    assert wm.commit_point(TP) == 11


def test_duplicate_and_unknown_done_are_ignored_and_counted() -> None:
    wm = OffsetWatermark()
    wm.track(TP, 0)
    wm.track(TP, 1)
    assert wm.done(TP, 0) is True
    assert wm.done(TP, 0) is False  # duplicate
    assert wm.done(TP, 5) is False  # never tracked
    assert wm.done(TP1, 0) is False  # unknown partition
    assert wm.ignored == 3
    assert wm.commit_point(TP) == 1
    assert wm.pending(TP) == 1


def test_track_must_ascend_per_partition() -> None:
    wm = OffsetWatermark()
    wm.track(TP, 3)
    with pytest.raises(ValueError, match="ascend"):
        wm.track(TP, 3)
    with pytest.raises(ValueError, match="ascend"):
        wm.track(TP, 2)
    with pytest.raises(ValueError, match=">= 0"):
        wm.track(TP1, -1)
    wm.track(TP1, 0)  # other partitions are independent
    assert wm.pending() == 2


def test_advanced_and_mark_committed() -> None:
    wm = OffsetWatermark()
    wm.track(TP, 0)
    wm.track(TP1, 100)
    assert wm.advanced() == {TP: 0, TP1: 100}  # never committed: offer the position
    wm.mark_committed(TP, 0)
    wm.mark_committed(TP1, 100)
    assert wm.advanced() == {}
    wm.done(TP, 0)
    assert wm.advanced() == {TP: 1}
    wm.mark_committed(TP, 1)
    wm.mark_committed(TP, 0)  # a late, older commit completion does not move it back
    assert wm.advanced() == {}


def test_forget_drops_state_and_late_acks() -> None:
    wm = OffsetWatermark()
    wm.track(TP, 0)
    wm.track(TP, 1)
    wm.track(TP1, 0)
    wm.forget(TP)
    assert wm.partitions() == [TP1]
    assert wm.pending() == 1
    assert wm.done(TP, 0) is False
    wm.mark_committed(TP, 1)  # commit finishing after revocation must not resurrect it
    assert wm.partitions() == [TP1]
    wm.track(TP, 0)  # re-assigned later: starts fresh, re-reading is allowed
    assert wm.commit_point(TP) == 0
    wm.forget(("never", 9))  # forgetting an unknown partition is a no-op


def test_skip_to_passes_deleted_offsets_only_after_what_is_pending() -> None:
    """Records 3..9 were deleted before they were read: the commit may reach 10, but not
    before 2 (fetched, still in flight) is done; reading on from 10 ascends as usual."""
    wm = OffsetWatermark()
    for off in (0, 1, 2):
        wm.track(TP, off)
    wm.done(TP, 0)
    wm.skip_to(TP, 10)
    assert wm.commit_point(TP) == 1
    wm.done(TP, 1)
    wm.done(TP, 2)
    assert wm.commit_point(TP) == 10
    wm.skip_to(TP, 4)  # never backwards
    assert wm.commit_point(TP) == 10
    wm.track(TP, 10)
    assert wm.commit_point(TP) == 10
    with pytest.raises(ValueError):
        wm.track(TP, 9)  # below the skipped range: a re-read, as for any other offset


def test_skip_to_on_an_untracked_partition() -> None:
    """Deleted from the very first offset this process would read: commit at the new start."""
    wm = OffsetWatermark()
    wm.skip_to(TP1, 40)
    assert wm.commit_point(TP1) == 40
    assert wm.advanced() == {TP1: 40}


@st.composite
def _offsets_and_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60))
    start = draw(st.integers(min_value=0, max_value=1_000))
    offsets = [start]
    for gap in gaps[1:]:
        offsets.append(offsets[-1] + gap)
    order = draw(st.permutations(offsets))
    return offsets, list(order)


@settings(max_examples=200, deadline=None)
@given(_offsets_and_order())
def test_property_commit_point_is_smallest_not_done(case: tuple[list[int], list[int]]) -> None:
    offsets, order = case
    wm = OffsetWatermark()
    for offset in offsets:
        wm.track(TP, offset)
    finished: set[int] = set()
    for offset in order:
        wm.done(TP, offset)
        finished.add(offset)
        not_done = [o for o in offsets if o not in finished]
        expected = min(not_done) if not_done else offsets[-1] + 1
        assert wm.commit_point(TP) == expected
        assert wm.pending(TP) == len(not_done)


_STEPS = st.lists(
    st.tuples(
        st.integers(0, 2),  # partition
        st.booleans(),  # fetch (True) or ack (False)
        st.integers(1, 4),  # gap to the next fetched offset
        st.integers(0, 10**6),  # which tracked offset to ack (mod count): may repeat
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(_STEPS)
def test_property_interleaved_track_done_many_partitions(
    steps: list[tuple[int, bool, int, int]],
) -> None:
    """Fetches and acks interleave across partitions, duplicate acks included."""
    wm = OffsetWatermark()
    tps = [("t", p) for p in range(3)]
    tracked: dict[tuple[str, int], list[int]] = {tp: [] for tp in tps}
    finished: dict[tuple[str, int], set[int]] = {tp: set() for tp in tps}
    for part, fetch, gap, pick in steps:
        tp = tps[part]
        if fetch or not tracked[tp]:
            offset = (tracked[tp][-1] if tracked[tp] else -1) + gap
            wm.track(tp, offset)
            tracked[tp].append(offset)
        else:
            offset = tracked[tp][pick % len(tracked[tp])]
            assert wm.done(tp, offset) is (offset not in finished[tp])
            finished[tp].add(offset)
        for q in tps:
            if not tracked[q]:
                assert wm.commit_point(q) is None
                continue
            not_done = [o for o in tracked[q] if o not in finished[q]]
            expected = min(not_done) if not_done else tracked[q][-1] + 1
            assert wm.commit_point(q) == expected
        assert wm.pending() == sum(len(tracked[q]) - len(finished[q]) for q in tps)
