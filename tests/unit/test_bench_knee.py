"""Knee search: ramp, stop at the loosest target, bisect on the tightest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from streamer.bench.knee import WARMUP_S, KneeSearch, StepOutcome, warmup_plan


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
    assert run(s, lambda r: 99.0) == [100, 100]  # measured once more, failed again
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


def test_a_failed_first_step_is_measured_once_more_and_its_retake_counts() -> None:
    """A cold first step (11 ms, then 7 ms once warm) must not decide "none met" on its own."""
    p99 = iter([11.0, 7.0, 7.0, 7.0, 60.0])
    s = KneeSearch((10.0, 50.0), start_rate=100, growth=2)
    assert not s.retaking
    rates = run(s, lambda r: next(p99))
    assert rates == [100, 100, 200, 400, 800]
    assert [o.p99_ms for o in s.superseded] == [11.0]
    assert [o.offered_rate for o in s.outcomes] == [100, 200, 400, 800]
    assert s.max_sustained(10.0) == 400 and s.max_sustained(50.0) == 400


def test_the_retake_replaces_the_first_step_even_when_it_is_worse() -> None:
    """Not a best of two: the retake counts, whatever either measured; and only once."""
    s = KneeSearch((10.0, 50.0), start_rate=100, growth=2)
    s.record(StepOutcome(100, 12.0, 0))
    assert s.retaking and s.next_rate() == 100
    s.record(StepOutcome(100, 80.0, 0))
    assert not s.retaking
    assert s.next_rate() is None  # failed the loosest target: the ramp ends, no third try
    assert s.max_sustained(10.0) is None and s.max_sustained(50.0) is None
    assert [o.p99_ms for o in s.superseded] == [12.0]


def test_a_first_step_that_met_every_target_is_not_retaken() -> None:
    s = KneeSearch((10.0,), start_rate=100, growth=2)
    s.record(StepOutcome(100, 5.0, 0))
    assert not s.retaking and s.next_rate() == 200
    s.record(StepOutcome(200, 50.0, 0))  # a later failure is not retaken
    assert not s.retaking and s.next_rate() is None and not s.superseded


def test_any_failure_of_the_first_step_is_retaken_and_the_retake_costs_a_step() -> None:
    for first in (StepOutcome(100, 1.0, missing=2), StepOutcome(100, 1.0, 0, True)):
        s = KneeSearch((10.0,), start_rate=100, growth=2, max_steps=2)
        s.record(first)
        assert s.retaking and s.next_rate() == 100
        s.record(StepOutcome(100, 1.0, 0))
        assert s.next_rate() is None  # max_steps counts the superseded step
        assert s.max_sustained(10.0) == 100


def test_the_retake_can_be_turned_off() -> None:
    s = KneeSearch((10.0,), start_rate=100, retake_first=False)
    assert run(s, lambda r: 99.0) == [100]


def test_the_warm_up_runs_at_the_first_measured_rate_for_five_seconds_by_default(
    tmp_path: Path,
) -> None:
    from streamer.bench.harness import BenchConfig

    assert warmup_plan(100.0, 5.0) == (100.0, 5.0)
    assert WARMUP_S >= 5.0
    for profile in ("quick", "full", "emulated", "gpu"):
        cfg = BenchConfig.preset(profile, tmp_path, tmp_path)
        assert cfg.warmup_s == WARMUP_S, profile
    assert BenchConfig.preset("quick", tmp_path, tmp_path, warmup_s=1.0).warmup_s == 1.0
    with pytest.raises(ValueError):
        warmup_plan(0.0, 5.0)
