"""Open-loop schedule generation (constant and Poisson) and bad-record planning."""

from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.bench import loadgen


def test_constant_schedule_is_evenly_spaced() -> None:
    offsets = loadgen.schedule(100.0, 2.0)
    assert len(offsets) == 200
    assert offsets[0] == 0.0
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(offsets)}
    assert gaps == {0.01}


@given(
    rate=st.floats(min_value=0.5, max_value=5_000),
    duration=st.floats(min_value=0.1, max_value=20),
)
def test_constant_schedule_stays_inside_the_window(rate: float, duration: float) -> None:
    offsets = loadgen.schedule(rate, duration)
    assert all(0 <= o < duration + 1e-9 for o in offsets)
    assert offsets == sorted(offsets)
    assert abs(len(offsets) - rate * duration) <= 1


def test_poisson_schedule_has_the_right_rate_and_exponential_gaps() -> None:
    offsets = loadgen.schedule(1000.0, 20.0, "poisson", seed=1)
    assert 19_000 < len(offsets) < 21_000  # 20,000 expected; 7 sigma is ~1,000
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.001, rel=0.05)
    # exponential: standard deviation equals the mean (a constant schedule would have 0)
    assert statistics.pstdev(gaps) == pytest.approx(mean, rel=0.1)
    assert offsets == sorted(offsets) and offsets[-1] < 20.0


def test_poisson_schedule_is_reproducible_per_seed() -> None:
    a = loadgen.schedule(50, 5, "poisson", seed=4)
    assert a == loadgen.schedule(50, 5, "poisson", seed=4)
    assert a != loadgen.schedule(50, 5, "poisson", seed=5)


def test_schedule_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        loadgen.schedule(0, 1)
    with pytest.raises(ValueError):
        loadgen.schedule(10, 1, "bursty")  # type: ignore[arg-type]


def test_bad_record_plan_hits_the_fraction() -> None:
    plan = loadgen.bad_record_plan(10_000, 0.05, seed=2)
    assert 400 < len(plan) < 600
    assert plan == loadgen.bad_record_plan(10_000, 0.05, seed=2)
    assert loadgen.bad_record_plan(100, 0.0, seed=2) == set()
    with pytest.raises(ValueError):
        loadgen.bad_record_plan(10, 1.5, seed=2)


def test_event_ids_are_unique_and_sortable() -> None:
    tag = loadgen.new_run_tag()
    ids = [loadgen.new_event_id(tag, i) for i in (0, 1, 10, 999)]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert loadgen.new_run_tag() != tag


def test_generator_that_slipped_reports_it() -> None:
    base = dict(
        topic="t",
        offered_rate=10.0,
        duration_s=1.0,
        scheduled=10,
        sent=10,
        acked=10,
        failed=0,
        bad=0,
        started_at_ms=0,
    )
    assert not loadgen.LoadReport(**base, max_behind_ms=30.0, p99_behind_ms=12.0).fell_behind
    assert loadgen.LoadReport(**base, max_behind_ms=90.0, p99_behind_ms=60.0).fell_behind
    assert loadgen.LoadReport(**base, max_behind_ms=1500.0, p99_behind_ms=1.0).fell_behind
