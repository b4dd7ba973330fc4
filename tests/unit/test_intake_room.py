"""The fetch bound: one fetch never takes more than any route can hold, paused ones included.

Regression: a paused route used to be left out of the bound, so a fetch sized by another
route's room (200 pairs) could, when completions resumed the paused route while the fetch was in
flight, bring 200 queries into the intent route bounded at 16 (tests/integration/test_faults.py
saw 168 in flight).
"""

from __future__ import annotations

from types import SimpleNamespace

from streamer.pipeline.backpressure import Backpressure
from streamer.pipeline.intake import KafkaIntake


def _intake(**routes: Backpressure) -> SimpleNamespace:
    return SimpleNamespace(
        routes={name: SimpleNamespace(backpressure=bp) for name, bp in routes.items()},
        _max_poll_records=1024,
    )


def test_room_is_the_tightest_route() -> None:
    intent, pairs = Backpressure(high=16, low=8), Backpressure(high=200, low=100)
    intent.add(10)
    assert KafkaIntake.room(_intake(intent=intent, duplicate=pairs)) == 6  # type: ignore[arg-type]


def test_a_paused_route_still_bounds_the_fetch_by_its_room_at_resume() -> None:
    intent, pairs = Backpressure(high=16, low=8), Backpressure(high=200, low=100)
    intent.add(16)
    intent.decide()  # pauses
    assert intent.paused
    room = KafkaIntake.room(_intake(intent=intent, duplicate=pairs))  # type: ignore[arg-type]
    # It may resume mid-fetch at <= low in flight; whatever the fetch brings must still fit.
    assert room == intent.high - intent.low
    intent.remove(16)
    intent.decide()  # resumes at 0
    assert intent.inflight + room <= intent.high


def test_room_never_below_one_nor_above_max_poll_records() -> None:
    full = Backpressure(high=4, low=2)
    full.add(4)
    assert KafkaIntake.room(_intake(a=full)) == 1  # type: ignore[arg-type]
    assert KafkaIntake.room(_intake(a=Backpressure(high=10_000, low=1))) == 1024  # type: ignore[arg-type]
