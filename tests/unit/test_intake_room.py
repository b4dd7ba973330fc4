"""The fetch bound: one fetch takes records only from routes with room, never more than the
tightest of them has.

Regression: one fetch used to serve every partition, sized by the open routes' room; a route
held by backpressure that completions re-opened while the fetch was in flight then received
up to another route's room (intents reached 168-200 in flight against a bound of 16 beside the
pair route: tests/integration/test_faults.py). A fetch now asks only for the partitions of
routes that are open when it starts.
"""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition

from streamer.pipeline.backpressure import Backpressure
from streamer.pipeline.intake import KafkaIntake


def _intake(**routes: Backpressure) -> SimpleNamespace:
    states = {name: SimpleNamespace(backpressure=bp) for name, bp in routes.items()}
    return SimpleNamespace(
        routes=states,
        _by_topic={f"{name}-topic": state for name, state in states.items()},
        _unready=set(),
        _max_poll_records=1024,
    )


def test_room_is_the_tightest_open_route() -> None:
    intent, pairs = Backpressure(high=16, low=8), Backpressure(high=200, low=100)
    intent.add(10)
    assert KafkaIntake.room(_intake(intent=intent, duplicate=pairs)) == 6  # type: ignore[arg-type]


def test_a_held_route_gets_no_records_from_a_fetch_sized_by_another() -> None:
    intent, pairs = Backpressure(high=16, low=8), Backpressure(high=200, low=100)
    intent.add(16)
    intent.decide()  # held
    intake = _intake(intent=intent, duplicate=pairs)
    tps = [TopicPartition(f"{name}-topic", p) for name in ("intent", "duplicate") for p in (0, 1)]
    fetched = KafkaIntake.open_partitions(intake, tps)  # type: ignore[arg-type]
    assert {tp.topic for tp in fetched} == {"duplicate-topic"}
    assert KafkaIntake.room(intake) == 200  # type: ignore[arg-type]


def test_room_never_below_one_nor_above_max_poll_records() -> None:
    full = Backpressure(high=4, low=2)
    full.add(4)
    assert KafkaIntake.room(_intake(a=full)) == 1  # type: ignore[arg-type]
    assert KafkaIntake.room(_intake(a=Backpressure(high=10_000, low=1))) == 1024  # type: ignore[arg-type]
