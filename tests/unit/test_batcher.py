"""MicroBatcher: size / padded-token / linger closing, bucket choice, order and deadlines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.model.buckets import choose_batch as batch_bucket
from streamer.model.buckets import choose_seq_len as seq_bucket
from streamer.pipeline.batcher import (
    Batch,
    BatchPolicy,
    MicroBatcher,
    duplicate_policy,
    intent_policy,
)


def _policy(**overrides: object) -> BatchPolicy:
    fields: dict = {
        "max_batch": 4,
        "max_padded_tokens": 4 * 16,
        "max_linger_s": 0.010,
        "seq_buckets": (8, 16, 32),
        "batch_buckets": (1, 2, 4),
    }
    fields.update(overrides)
    return BatchPolicy(**fields)


def test_bucket_helpers_pick_smallest_fitting() -> None:
    assert seq_bucket((16, 32, 64), 1) == 16
    assert seq_bucket((16, 32, 64), 16) == 16
    assert seq_bucket((16, 32, 64), 17) == 32
    assert seq_bucket((16, 32, 64), 0) == 16
    assert batch_bucket((1, 2, 4, 8), 3) == 4
    assert batch_bucket((1, 2, 4, 8), 8) == 8
    with pytest.raises(ValueError, match="largest compiled bucket 64"):
        seq_bucket((16, 32, 64), 65)
    with pytest.raises(ValueError, match="largest compiled bucket 8"):
        batch_bucket((1, 2, 4, 8), 9)
    with pytest.raises(ValueError):
        batch_bucket((1, 2), 0)
    with pytest.raises(ValueError):
        seq_bucket((16,), -1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_batch": 0},
        {"max_batch": 5},  # larger than the largest batch bucket
        {"max_padded_tokens": 0},
        {"max_linger_s": -0.001},
        {"max_linger_s": float("inf")},
        {"seq_buckets": ()},
        {"seq_buckets": (32, 16)},
        {"seq_buckets": (16, 16)},
        {"batch_buckets": (0, 4)},
    ],
)
def test_policy_validation(overrides: dict) -> None:
    with pytest.raises(ValueError):
        _policy(**overrides)


def test_closes_by_size() -> None:
    b: MicroBatcher[str] = MicroBatcher(_policy())
    assert b.add("a", 5, now=0.0) == []
    assert b.add("b", 5, now=0.001) == []
    assert b.add("c", 5, now=0.002) == []
    [batch] = b.add("d", 5, now=0.003)
    assert batch.items == ["a", "b", "c", "d"]
    assert batch.lengths == [5, 5, 5, 5]
    assert (batch.seq_len, batch.padded_rows, batch.reason) == (8, 4, "size")
    assert (batch.opened_at, batch.closed_at) == (0.0, 0.003)
    assert batch.rows == 4 and batch.padded_tokens == 32
    assert batch.waited_s == pytest.approx(0.003)
    assert len(b) == 0 and b.deadline() is None


def test_row_that_would_bust_token_budget_closes_open_batch_first() -> None:
    b: MicroBatcher[str] = MicroBatcher(_policy())  # budget 64
    b.add("a", 8, now=0.0)
    b.add("b", 8, now=0.0)  # 2 rows x 8 = 16
    [closed] = b.add("c", 20, now=0.001)  # 3 rows pad to 4 x 32 = 128 > 64
    assert closed.items == ["a", "b"] and closed.reason == "tokens"
    assert len(b) == 1
    assert b.deadline() == pytest.approx(0.011)  # the new batch opened with "c"


def test_batch_closes_as_soon_as_no_further_row_can_fit() -> None:
    b: MicroBatcher[str] = MicroBatcher(_policy())  # budget 64
    assert b.add("a", 20, now=0.0) == []  # 1 x 32 = 32: a second row would pay 2 x 32 = 64
    [batch] = b.add("b", 20, now=0.001)  # a third would pay 4 x 32 = 128: no point waiting
    assert batch.items == ["a", "b"] and batch.reason == "tokens"
    assert batch.padded_tokens == 64 and batch.closed_at == 0.001
    assert len(b) == 0


def test_single_over_budget_row_goes_alone_and_may_close_two_batches() -> None:
    b: MicroBatcher[str] = MicroBatcher(_policy(max_padded_tokens=24))
    b.add("short", 4, now=0.0)
    first, second = b.add("long", 30, now=0.5)  # 1 x 32 alone exceeds 24
    assert first.items == ["short"] and first.reason == "tokens"
    assert second.items == ["long"] and second.reason == "tokens"
    assert second.padded_tokens == 32 and second.opened_at == second.closed_at == 0.5
    assert len(b) == 0


def test_too_long_row_raises_without_changing_state() -> None:
    b: MicroBatcher[str] = MicroBatcher(_policy())
    b.add("a", 3, now=0.0)
    with pytest.raises(ValueError, match="largest compiled bucket"):
        b.add("b", 33, now=0.0)
    assert len(b) == 1
    batch = b.flush(now=1.0)
    assert batch is not None and batch.items == ["a"] and batch.reason == "flush"
    assert b.flush(now=1.0) is None


def test_linger_poll_and_deadline() -> None:
    b: MicroBatcher[str] = MicroBatcher(_policy())
    assert b.poll(now=100.0) is None
    assert b.deadline() is None
    b.add("a", 3, now=1.0)
    assert b.deadline() == pytest.approx(1.010)
    b.add("b", 3, now=1.005)  # joining rows do not extend the deadline
    assert b.deadline() == pytest.approx(1.010)
    assert b.poll(now=1.009) is None
    batch = b.poll(now=b.deadline())  # type: ignore[arg-type]
    assert batch is not None and batch.items == ["a", "b"] and batch.reason == "linger"
    assert (batch.seq_len, batch.padded_rows) == (8, 2)


def test_add_never_closes_for_linger_so_bursts_batch() -> None:
    b: MicroBatcher[int] = MicroBatcher(_policy(max_linger_s=0.0))
    assert b.add(1, 3, now=5.0) == []
    assert b.add(2, 3, now=5.0) == []
    batch = b.poll(now=5.0)
    assert batch is not None and batch.items == [1, 2]


def test_adaptive_linger_is_clamped_and_fixed_at_open() -> None:
    value = [0.004]
    b: MicroBatcher[str] = MicroBatcher(_policy(), linger=lambda: value[0])
    b.add("a", 3, now=0.0)
    assert b.deadline() == pytest.approx(0.004)
    value[0] = 1.0  # a later estimate does not move an open batch's deadline
    assert b.deadline() == pytest.approx(0.004)
    b.poll(now=0.004)
    b.add("b", 3, now=1.0)
    assert b.deadline() == pytest.approx(1.010)  # clamped to max_linger_s
    b.flush(now=1.0)
    value[0] = -3.0
    b.add("c", 3, now=2.0)
    assert b.deadline() == pytest.approx(2.0)
    b.flush(now=2.0)
    value[0] = float("nan")
    b.add("d", 3, now=3.0)
    assert b.deadline() == pytest.approx(3.010)  # no estimate: fall back to the cap


def test_intent_policy_shapes() -> None:
    policy = intent_policy()
    b: MicroBatcher[int] = MicroBatcher(policy)
    closed: list[Batch[int]] = []
    for i in range(32):
        closed += b.add(i, 12, now=0.0)
    assert [c.reason for c in closed] == ["size"]
    assert (closed[0].rows, closed[0].seq_len, closed[0].padded_rows) == (32, 16, 32)
    # one 64-token query caps its batch at 8 rows instead of making 32 rows pay length 64
    closed = b.add(-1, 60, now=0.0)
    for i in range(20):
        closed += b.add(i, 10, now=0.0)
    assert closed[0].rows == 8 and closed[0].padded_tokens == 512
    assert intent_policy(max_batch=4, max_padded_tokens=64).max_batch == 4


def test_duplicate_policy_shapes() -> None:
    policy = duplicate_policy()
    assert policy.max_linger_s >= 0.05
    b: MicroBatcher[int] = MicroBatcher(policy)
    closed: list[Batch[int]] = []
    for i in range(300):
        closed += b.add(i, 100, now=0.0)
    assert [c.rows for c in closed] == [128, 128]
    assert closed[0].padded_tokens == 128 * 128
    rest = b.flush(now=0.0)
    assert rest is not None and (rest.rows, rest.padded_rows) == (44, 64)


# ----------------------------------------------------------------------------- properties


@st.composite
def _policies(draw: st.DrawFn) -> BatchPolicy:
    seq = tuple(sorted(draw(st.sets(st.integers(1, 64), min_size=1, max_size=4))))
    rows = tuple(sorted(draw(st.sets(st.integers(1, 16), min_size=1, max_size=5))))
    return BatchPolicy(
        max_batch=draw(st.integers(1, rows[-1])),
        max_padded_tokens=draw(st.integers(1, 1024)),
        max_linger_s=draw(st.sampled_from([0.0, 0.001, 0.005, 0.05])),
        seq_buckets=seq,
        batch_buckets=rows,
    )


_ops = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.02, allow_nan=False),  # time step
        st.integers(0, 64),  # n_tokens (clamped to the policy's largest bucket)
        st.booleans(),  # poll after this add?
    ),
    max_size=60,
)


def _check_batch(policy: BatchPolicy, batch: Batch[int]) -> None:
    assert 1 <= batch.rows <= policy.max_batch
    assert batch.seq_len == seq_bucket(policy.seq_buckets, max(batch.lengths))
    assert batch.padded_rows == batch_bucket(policy.batch_buckets, batch.rows)
    if batch.rows > 1:
        assert batch.padded_tokens <= policy.max_padded_tokens
    assert batch.closed_at >= batch.opened_at


@settings(max_examples=150, deadline=None)
@given(_policies(), _ops, st.floats(min_value=0.0, max_value=0.1, allow_nan=False))
def test_property_exactly_once_in_order_within_limits(
    policy: BatchPolicy, ops: list[tuple[float, int, bool]], linger: float
) -> None:
    b: MicroBatcher[int] = MicroBatcher(policy, linger=lambda: linger)
    out: list[Batch[int]] = []
    now = 0.0
    for i, (step, n_tokens, do_poll) in enumerate(ops):
        now += step
        out += b.add(i, min(n_tokens, policy.seq_buckets[-1]), now)
        if do_poll and (batch := b.poll(now)) is not None:
            out.append(batch)
    if (batch := b.flush(now)) is not None:
        out.append(batch)
    assert len(b) == 0
    assert [item for batch in out for item in batch.items] == list(range(len(ops)))
    for batch in out:
        _check_batch(policy, batch)


@settings(max_examples=150, deadline=None)
@given(_policies(), _ops, st.lists(st.floats(0.0, 0.2, allow_nan=False), min_size=1))
def test_property_never_waits_past_deadline_when_polled_on_time(
    policy: BatchPolicy, ops: list[tuple[float, int, bool]], lingers: list[float]
) -> None:
    """An event loop that sleeps until deadline() and polls: no batch overstays its linger."""
    calls = iter(range(10**9))
    b: MicroBatcher[int] = MicroBatcher(policy, linger=lambda: lingers[next(calls) % len(lingers)])
    out: list[Batch[int]] = []
    now = 0.0
    for i, (step, n_tokens, _) in enumerate(ops):
        arrival = now + step
        while (due := b.deadline()) is not None and due <= arrival:
            batch = b.poll(due)
            assert batch is not None, "poll at the deadline must close the batch"
            out.append(batch)
        now = arrival
        out += b.add(i, min(n_tokens, policy.seq_buckets[-1]), now)
    while (due := b.deadline()) is not None:
        batch = b.poll(due)
        assert batch is not None
        out.append(batch)
    assert [item for batch in out for item in batch.items] == list(range(len(ops)))
    for batch in out:
        _check_batch(policy, batch)
        assert batch.waited_s <= policy.max_linger_s + 1e-12


def test_group_by_length_keeps_long_rows_from_padding_short_ones() -> None:
    """Pairs: each sequence bucket has its own open batch; order is kept within a bucket."""
    policy = BatchPolicy(
        max_batch=4, max_padded_tokens=4 * 128, max_linger_s=1.0,
        seq_buckets=(64, 128, 256), batch_buckets=(1, 2, 3, 4), group_by_length=True,
    )  # fmt: skip
    b: MicroBatcher[str] = MicroBatcher(policy)
    closed = []
    for i, n in enumerate([30, 200, 40, 50, 100]):
        closed += b.add(f"r{i}", n, now=0.0)
    assert closed == [], "no bucket is full yet"
    assert len(b) == 5
    closed += b.add("r5", 60, now=0.1)  # the fourth 64-bucket row fills its batch
    assert [(x.items, x.seq_len, x.reason) for x in closed] == [
        (["r0", "r2", "r3", "r5"], 64, "size")
    ]
    assert b.add("r6", 20, now=0.2) == []
    assert b.deadline() == pytest.approx(1.0)  # the 256 row opened first
    first = b.poll(now=1.0)
    second = b.poll(now=1.0)
    assert first is not None and second is not None and b.poll(now=1.0) is None
    assert {(tuple(x.items), x.seq_len) for x in (first, second)} == {
        (("r1",), 256),
        (("r4",), 128),
    }
    left = b.flush(now=2.0)
    assert left is not None and left.items == ["r6"] and left.seq_len == 64
    assert b.flush(now=2.0) is None and len(b) == 0


def test_without_grouping_one_long_row_pads_its_whole_batch() -> None:
    policy = BatchPolicy(
        max_batch=4, max_padded_tokens=4 * 256, max_linger_s=1.0,
        seq_buckets=(64, 128, 256), batch_buckets=(1, 2, 3, 4),
    )  # fmt: skip
    b: MicroBatcher[str] = MicroBatcher(policy)
    closed = []
    for i, n in enumerate([30, 200, 40, 50]):
        closed += b.add(f"r{i}", n, now=0.0)
    assert [(x.items, x.seq_len) for x in closed] == [(["r0", "r1", "r2", "r3"], 256)]


def test_pair_policy_groups_by_length_by_default() -> None:
    from streamer.pipeline.batcher import duplicate_policy, intent_policy

    assert duplicate_policy().group_by_length and not intent_policy().group_by_length
