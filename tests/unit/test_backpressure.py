"""Backpressure: Little's-law sizing and pause/resume hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.pipeline.backpressure import Action, Backpressure, inflight_limit


def test_inflight_limit_is_throughput_times_latency() -> None:
    assert inflight_limit(16_000, 0.010) == 160  # DESIGN.md section 3
    assert inflight_limit(8_800, 0.5) == 4_400
    assert inflight_limit(100, 0.0125) == 2  # 1.25 rounds up: never below the need
    assert inflight_limit(10, 0.001) == 1  # floor
    assert inflight_limit(10, 0.001, floor=4) == 4
    assert inflight_limit(16_000, 0.010, ceiling=64) == 64


@pytest.mark.parametrize(
    ("tps", "budget", "kwargs"),
    [
        (0, 0.01, {}),
        (-5, 0.01, {}),
        (100, 0, {}),
        (float("nan"), 0.01, {}),
        (100, float("inf"), {}),
        (100, 0.01, {"floor": 0}),
        (100, 0.01, {"floor": 5, "ceiling": 4}),
    ],
)
def test_inflight_limit_rejects_nonsense(tps: float, budget: float, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        inflight_limit(tps, budget, **kwargs)


@pytest.mark.parametrize(("high", "low"), [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_thresholds_validated(high: int, low: int) -> None:
    with pytest.raises(ValueError):
        Backpressure(high=high, low=low)


def test_pause_at_high_resume_at_low_once_each() -> None:
    bp = Backpressure(high=4, low=1)
    bp.add(3)
    assert bp.decide() is Action.NONE
    bp.add()
    assert bp.decide() is Action.PAUSE
    assert bp.paused
    bp.add(5)  # records already fetched still arrive while paused
    assert bp.decide() is Action.NONE  # no second PAUSE
    bp.remove(7)
    assert bp.inflight == 2
    assert bp.decide() is Action.NONE  # between low and high: stay paused
    bp.remove()
    assert bp.decide() is Action.RESUME
    assert not bp.paused
    assert bp.decide() is Action.NONE


def test_remove_never_below_zero() -> None:
    bp = Backpressure(high=2, low=0)
    bp.add(1)
    with pytest.raises(ValueError, match="unbalanced"):
        bp.remove(2)
    assert bp.inflight == 1
    with pytest.raises(ValueError):
        bp.add(-1)
    with pytest.raises(ValueError):
        bp.remove(-1)


def test_for_budget_uses_littles_law() -> None:
    bp = Backpressure.for_budget(16_000, 0.010)
    assert (bp.high, bp.low) == (160, 80)
    tiny = Backpressure.for_budget(1, 0.001)
    assert tiny.low < tiny.high
    with pytest.raises(ValueError):
        Backpressure.for_budget(100, 0.01, resume_fraction=1.0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=50),
    st.data(),
)
def test_property_actions_alternate_and_respect_thresholds(high: int, data: st.DataObject) -> None:
    low = data.draw(st.integers(min_value=0, max_value=high - 1))
    bp = Backpressure(high=high, low=low)
    model_inflight = 0
    last = Action.RESUME  # the stream starts consuming
    for delta in data.draw(st.lists(st.integers(min_value=-20, max_value=20), max_size=80)):
        if delta >= 0:
            bp.add(delta)
        else:
            delta = max(delta, -model_inflight)
            bp.remove(-delta)
        model_inflight += delta
        assert bp.inflight == model_inflight
        action = bp.decide()
        if action is Action.PAUSE:
            assert last is Action.RESUME and model_inflight >= high
            last = action
        elif action is Action.RESUME:
            assert last is Action.PAUSE and model_inflight <= low
            last = action
        # after decide() the state is consistent with the thresholds
        if bp.paused:
            assert model_inflight > low
        else:
            assert model_inflight < high
        assert bp.paused is (last is Action.PAUSE)
