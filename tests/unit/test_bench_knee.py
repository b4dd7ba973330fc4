"""Knee search: ramp, stop at the loosest target, bisect on the tightest."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamer.bench.knee import KneeSearch, StepOutcome


def run(
    search: KneeSearch, p99_at: Callable[[float], float], behind_at: float = 1e12
) -> list[float]:
    rates = []
    while (rate := search.next_rate()) is not None:
        rates.append(rate)
        search.record(
            StepOutcome(rate, p99_at(rate), missing=0, generator_behind=rate >= behind_at)
        )
    return rates


def hockey_stick(knee: float) -> Callable[[float], float]:
    """Flat 3 ms below the knee, exploding above it, like a queue reaching saturation."""
    return lambda rate: 3.0 if rate <= knee else 3.0 * (rate / knee) ** 6


def test_ramp_stops_once_the_loosest_target_breaks() -> None:
    s = KneeSearch((10.0, 50.0), start_rate=100, growth=2)
    rates = run(s, hockey_stick(500))
    assert rates == [100, 200, 400, 800]
    assert s.max_sustained(10.0) == 400
    assert s.max_sustained(50.0) == 400


def test_refinement_bisects_between_pass_and_fail() -> None:
    s = KneeSearch((10.0,), start_rate=100, growth=2, refine_steps=3)
    run(s, hockey_stick(500))
    # after 100..800, refinement probes between 400 (pass) and 800 (fail)
    assert s.outcomes[4].offered_rate == pytest.approx((400 * 800) ** 0.5)
    # the true knee for 10 ms is where 3 * (r / 500) ** 6 = 10, i.e. r = 611
    best = s.max_sustained(10.0)
    assert best is not None and 500 < best <= 611


def test_two_targets_give_two_rates() -> None:
    p99 = {100: 2.0, 200: 8.0, 400: 30.0, 800: 200.0}
    s = KneeSearch((10.0, 50.0), start_rate=100, growth=2)
    run(s, lambda r: p99[int(r)])
    assert s.max_sustained(10.0) == 200
    assert s.max_sustained(50.0) == 400


def test_missing_results_fail_a_step_even_with_good_latency() -> None:
    assert not StepOutcome(100, 1.0, missing=3).meets(10)
    assert not StepOutcome(100, float("nan"), missing=0).meets(10)
    assert StepOutcome(100, 9.9, missing=0).meets(10)


def test_generator_falling_behind_ends_the_ramp() -> None:
    s = KneeSearch((10.0,), start_rate=100, growth=2)
    run(s, lambda r: 1.0, behind_at=400)
    assert [o.offered_rate for o in s.outcomes] == [100, 200, 400]
    assert s.max_sustained(10.0) == 200


def test_failing_first_step_means_no_sustained_rate() -> None:
    s = KneeSearch((10.0,), start_rate=100)
    run(s, lambda r: 99.0)
    assert len(s.outcomes) == 1 and s.max_sustained(10.0) is None


def test_limits_are_respected() -> None:
    s = KneeSearch((10.0,), start_rate=100, growth=2, max_rate=1000, max_steps=20)
    assert run(s, lambda r: 1.0) == [100, 200, 400, 800]
    s = KneeSearch((10.0,), start_rate=100, growth=2, max_steps=3)
    assert len(run(s, lambda r: 1.0)) == 3
    with pytest.raises(ValueError):
        KneeSearch((), start_rate=1)


def test_patience_keeps_ramping_past_one_noisy_step() -> None:
    from streamer.bench.knee import KneeSearch, StepOutcome

    strict = KneeSearch((50.0,), 100.0, 2.0)
    patient = KneeSearch((50.0,), 100.0, 2.0, patience=1)
    for search in (strict, patient):
        search.record(StepOutcome(100.0, 5.0, 0))
        search.record(StepOutcome(200.0, 80.0, 0))  # one noisy step
    assert strict.next_rate() is None
    assert patient.next_rate() == 400.0
    patient.record(StepOutcome(400.0, 10.0, 0))
    assert patient.max_sustained(50.0) == 100.0  # a rate counts only if no lower one failed
    patient.record(StepOutcome(800.0, 90.0, 0))
    patient.record(StepOutcome(1600.0, 95.0, 0))  # two in a row: the ramp ends
    assert patient.next_rate() is None
