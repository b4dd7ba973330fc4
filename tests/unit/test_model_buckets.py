"""Bucket choice and padding: smallest fitting bucket, filler rows, the shape grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.model.buckets import (
    DEFAULT_BUCKETS,
    Buckets,
    all_shapes,
    choose_batch,
    choose_seq_len,
    choose_shape,
    pad_to_shape,
)
from streamer.model.tasks import Task
from streamer.model.vocab import CLS_ID, SEP_ID

QUERY = Buckets(batch_sizes=(32, 1, 8), seq_lens=(32, 16))


def test_buckets_are_sorted_and_deduplicated() -> None:
    b = Buckets(batch_sizes=(8, 1, 8), seq_lens=(64, 16))
    assert b.batch_sizes == (1, 8)
    assert b.seq_lens == (16, 64)
    assert b.max_batch == 8 and b.max_seq_len == 64


@pytest.mark.parametrize(("n", "expected"), [(1, 16), (15, 16), (16, 16), (17, 32), (32, 32)])
def test_choose_seq_len_picks_the_smallest_fitting(n: int, expected: int) -> None:
    assert choose_seq_len(QUERY, n) == expected


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (2, 8), (8, 8), (9, 32), (32, 32)])
def test_choose_batch_picks_the_smallest_fitting(n: int, expected: int) -> None:
    assert choose_batch(QUERY, n) == expected


def test_too_large_or_empty_raises() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        choose_seq_len(QUERY, 33)
    with pytest.raises(ValueError, match="exceeds"):
        choose_batch(QUERY, 33)
    with pytest.raises(ValueError, match="positive"):
        choose_batch(QUERY, 0)


@given(st.lists(st.integers(1, 512), min_size=1, max_size=6), st.integers(1, 512))
def test_choice_is_minimal_among_fitting(sizes: list[int], n: int) -> None:
    fitting = [s for s in sizes if s >= n]
    if not fitting:
        with pytest.raises(ValueError):
            choose_batch(sizes, n)
    else:
        assert choose_batch(sizes, n) == min(fitting)


def test_buckets_json_round_trip() -> None:
    for b in DEFAULT_BUCKETS.values():
        assert Buckets.from_json(b.to_json()) == b


def test_all_shapes_is_the_union_of_both_grids() -> None:
    shapes = all_shapes(DEFAULT_BUCKETS)
    expected = set(DEFAULT_BUCKETS[Task.INTENT].shapes()) | set(
        DEFAULT_BUCKETS[Task.DUPLICATE].shapes()
    )
    assert set(shapes) == expected
    assert len(shapes) == len(expected)
    areas = [b * s for b, s in shapes]
    assert areas == sorted(areas)


def test_choose_shape_minimizes_padded_tokens() -> None:
    shapes = [(1, 16), (8, 16), (1, 64), (8, 64), (32, 16)]
    assert choose_shape(shapes, 1, 10) == (1, 16)
    assert choose_shape(shapes, 3, 16) == (8, 16)
    assert choose_shape(shapes, 2, 40) == (8, 64)
    with pytest.raises(ValueError, match="no compiled shape"):
        choose_shape(shapes, 33, 16)


def test_pad_to_shape_keeps_rows_and_adds_cls_sep_fillers() -> None:
    ids = np.array([[101, 7, 102]], np.int32)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids)
    pids, pmask, ptypes = pad_to_shape(ids, mask, types, 4, 8)
    assert pids.shape == pmask.shape == ptypes.shape == (4, 8)
    assert pids.dtype == np.int32
    np.testing.assert_array_equal(pids[0, :3], ids[0])
    assert pids[0, 3:].sum() == 0 and pmask[0, 3:].sum() == 0
    assert (pids[1:, 0] == CLS_ID).all() and (pids[1:, 1] == SEP_ID).all()
    assert (pmask[1:].sum(axis=1) == 2).all()
    with pytest.raises(ValueError):
        pad_to_shape(ids, mask, types, 1, 2)
