"""OrderedRelease: outcomes leave in offset order, never past an offset still in flight."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.pipeline.ordered import OrderedRelease


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[list[int], list[int], list[bool]]:
    """Ascending offsets with gaps, a completion order, and after which completions to release."""
    gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=60))
    offsets, at = [], draw(st.integers(0, 1000))
    for gap in gaps:
        offsets.append(at)
        at += gap
    order = draw(st.permutations(offsets))
    release_after = draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    return offsets, list(order), release_after


@given(_scenario())
def test_release_is_the_fetched_offsets_in_order_and_never_passes_a_pending_one(
    scenario: tuple[list[int], list[int], list[bool]],
) -> None:
    offsets, order, release_after = scenario
    rel: OrderedRelease[str] = OrderedRelease()
    for offset in offsets:
        rel.track(offset)
    released: list[int] = []
    completed: set[int] = set()
    for offset, release in zip(order, release_after, strict=True):
        assert rel.complete(offset, f"r{offset}")
        completed.add(offset)
        if release:
            for got, outcome in rel.release():
                assert outcome == f"r{got}"
                released.append(got)
            # Everything released is completed, and every offset below the last one released
            # was released before it: the released offsets are a prefix of the fetched ones.
            assert released == offsets[: len(released)]
            assert set(released) <= completed
            if released:
                assert rel.point == released[-1] + 1
            # Nothing held could have been released: the next fetched offset is still pending.
            if len(released) < len(offsets):
                assert offsets[len(released)] not in completed
        assert rel.pending() == len(offsets) - len(released)
    released += [o for o, _ in rel.release()]
    assert released == offsets
    assert rel.pending() == 0 and rel.held() == 0


def test_unknown_and_repeated_completions_are_refused() -> None:
    rel: OrderedRelease[str] = OrderedRelease()
    rel.track(5)
    assert not rel.complete(4, "never tracked")
    assert rel.complete(5, "first")
    assert not rel.complete(5, "second")  # the first outcome wins
    assert rel.release() == [(5, "first")]
    assert not rel.complete(5, "after release")


def test_offsets_must_ascend_until_reset() -> None:
    rel: OrderedRelease[str] = OrderedRelease()
    rel.track(3)
    rel.track(7)
    with pytest.raises(ValueError):
        rel.track(7)
    assert rel.complete(7, "held")
    assert rel.held() == 1 and rel.release() == []  # 3 is still in flight
    assert rel.reset() == ["held"]
    rel.track(3)  # re-read from the committed offset after a rewind
    assert rel.point is None and rel.pending() == 1
