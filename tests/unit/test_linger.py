"""LingerController: linger = what the P99 budget leaves after the measured stages."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.pipeline.linger import LingerController

MS = 0.001


def _p99(values: list[float]) -> float:
    """Reference nearest-rank P99."""
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def test_no_observations_gives_half_the_cap() -> None:
    assert LingerController(0.010, max_linger_s=4 * MS).linger() == pytest.approx(2 * MS)
    lc = LingerController(0.010, min_linger_s=3 * MS, max_linger_s=4 * MS)
    assert lc.linger() == pytest.approx(3 * MS)  # still clamped to the floor
    assert lc.snapshot() == {}


def test_linger_is_budget_left_after_stages() -> None:
    lc = LingerController(10 * MS, max_linger_s=50 * MS, refresh_every=1)
    lc.observe("fetch", 1 * MS)
    lc.observe("model", 3 * MS)
    lc.observe("produce", 1 * MS)
    # 0.8 x 10 ms - (1 + 3 + 1) ms
    assert lc.linger() == pytest.approx(3 * MS)
    assert lc.snapshot() == pytest.approx({"fetch": 1 * MS, "model": 3 * MS, "produce": 1 * MS})
    lc.observe("queue", 2 * MS)  # a new stage counts at once
    assert lc.linger() == pytest.approx(1 * MS)


def test_linger_clamped_to_min_and_max() -> None:
    lc = LingerController(10 * MS, min_linger_s=0.5 * MS, max_linger_s=2 * MS, refresh_every=1)
    lc.observe("model", 1 * MS)
    assert lc.linger() == pytest.approx(2 * MS)  # 7 ms left, capped
    lc.observe("model", 20 * MS)  # the budget is blown: wait as little as allowed
    assert lc.linger() == pytest.approx(0.5 * MS)


def test_p99_is_nearest_rank_over_the_window() -> None:
    lc = LingerController(1.0, max_linger_s=1.0, safety=1.0, refresh_every=1)
    for i in range(1, 101):
        lc.observe("model", i * MS)
    assert lc.snapshot()["model"] == pytest.approx(99 * MS)
    for i in range(101, 201):
        lc.observe("model", i * MS)
    assert lc.snapshot()["model"] == pytest.approx(198 * MS)


def test_old_observations_leave_the_window() -> None:
    lc = LingerController(10 * MS, max_linger_s=8 * MS, window=10, refresh_every=1)
    for _ in range(10):
        lc.observe("model", 7 * MS)
    assert lc.linger() == pytest.approx(1 * MS)
    for _ in range(10):
        lc.observe("model", 2 * MS)  # the slow spell is forgotten
    assert lc.linger() == pytest.approx(6 * MS)


def test_negative_durations_count_as_zero_and_nan_is_rejected() -> None:
    lc = LingerController(10 * MS, max_linger_s=20 * MS, refresh_every=1)
    lc.observe("fetch", -0.5 * MS)  # clock skew against the producer's timestamp
    assert lc.snapshot() == {"fetch": 0.0}
    assert lc.linger() == pytest.approx(8 * MS)
    with pytest.raises(ValueError, match="finite"):
        lc.observe("fetch", float("nan"))
    with pytest.raises(ValueError, match="finite"):
        lc.observe("fetch", float("inf"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p99_target_s": 0, "max_linger_s": 1},
        {"p99_target_s": float("nan"), "max_linger_s": 1},
        {"p99_target_s": 0.01, "max_linger_s": -1},
        {"p99_target_s": 0.01, "max_linger_s": 0.001, "min_linger_s": 0.002},
        {"p99_target_s": 0.01, "max_linger_s": 0.001, "window": 0},
        {"p99_target_s": 0.01, "max_linger_s": 0.001, "safety": 0},
        {"p99_target_s": 0.01, "max_linger_s": 0.001, "safety": 1.5},
        {"p99_target_s": 0.01, "max_linger_s": 0.001, "refresh_every": 0},
    ],
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LingerController(**kwargs)


def test_refresh_is_throttled_but_catches_up() -> None:
    lc = LingerController(1.0, max_linger_s=1.0, safety=1.0, window=2048, refresh_every=16)
    values = [1 * MS] * 2048
    for v in values:
        lc.observe("model", v)
    assert lc.snapshot()["model"] == pytest.approx(1 * MS)
    for _ in range(15):  # 15 slow samples: not yet a refresh...
        lc.observe("model", 9 * MS)
    assert lc.snapshot()["model"] == pytest.approx(1 * MS)
    for _ in range(6):  # ...21 slow samples now, refreshed after the 16th
        lc.observe("model", 9 * MS)
    values = values[21:] + [9 * MS] * 21
    assert lc.snapshot()["model"] == pytest.approx(_p99(values)) == pytest.approx(9 * MS)
    assert lc.linger() == pytest.approx(1.0 - 9 * MS)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["fetch", "queue", "model", "produce"]), st.floats(0, 0.05)),
        min_size=1,
        max_size=200,
    ),
    st.integers(min_value=1, max_value=64),
    st.floats(min_value=0.001, max_value=0.1),
)
def test_property_exact_mode_matches_reference(
    observations: list[tuple[str, float]], window: int, target: float
) -> None:
    lc = LingerController(target, max_linger_s=0.02, window=window, refresh_every=1)
    seen: dict[str, list[float]] = {}
    for stage, seconds in observations:
        lc.observe(stage, seconds)
        seen.setdefault(stage, []).append(seconds)
        expected = {name: _p99(values[-window:]) for name, values in seen.items()}
        assert lc.snapshot() == pytest.approx(expected)
        want = min(max(0.8 * target - sum(expected.values()), 0.0), 0.02)
        assert lc.linger() == pytest.approx(want)
