"""The fetch bound: one fetch never takes more than any route it asks for can hold.

Regression: when one fetch served every partition, a fetch sized by another route's room (200
pairs) could, when completions reopened the held intent route while the fetch was in flight,
bring 200 queries into the intent route bounded at 16 (tests/integration/test_faults.py saw 168
in flight). A fetch now asks only for the partitions of open routes.
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


def test_a_held_route_is_not_fetched_and_does_not_size_the_fetch() -> None:
    intent, pairs = Backpressure(high=16, low=8), Backpressure(high=200, low=100)
    intent.add(16)
    intent.decide()  # held
    assert intent.paused
    fake = _intake(intent=intent, duplicate=pairs)
    fake._by_topic = {"q": fake.routes["intent"], "p": fake.routes["duplicate"]}
    fake._unready = set()
    from aiokafka import TopicPartition

    tps = [TopicPartition("q", 0), TopicPartition("p", 0)]
    asked = KafkaIntake.open_partitions(fake, tps)  # type: ignore[arg-type]
    assert [tp.topic for tp in asked] == ["p"]  # whatever this fetch brings is pairs
    assert KafkaIntake.room(fake) == pairs.high  # type: ignore[arg-type]
    intent.remove(16)
    intent.decide()  # open again: its partitions are asked for, within its own room
    assert [tp.topic for tp in KafkaIntake.open_partitions(fake, tps)] == ["q", "p"]  # type: ignore[arg-type]
    assert KafkaIntake.room(fake) == intent.high  # type: ignore[arg-type]


def test_room_never_below_one_nor_above_max_poll_records() -> None:
    full = Backpressure(high=4, low=2)
    full.add(4)
    assert KafkaIntake.room(_intake(a=full)) == 1  # type: ignore[arg-type]
    assert KafkaIntake.room(_intake(a=Backpressure(high=10_000, low=1))) == 1024  # type: ignore[arg-type]
