"""Encoder: bucketed int32 arrays, token types for pairs, truncation flags, filler rows."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.model.buckets import Buckets
from streamer.model.network import backbone_dir
from streamer.model.tasks import Task
from streamer.model.tokenize import Encoder
from streamer.model.vocab import CLS_ID, SEP_ID

BUCKETS = {
    Task.INTENT: Buckets(batch_sizes=(1, 8), seq_lens=(16, 32)),
    Task.DUPLICATE: Buckets(batch_sizes=(1, 8), seq_lens=(64, 128)),
}


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.from_files(backbone_dir() / "tokenizer.json", BUCKETS, 32, 128)


def test_queries_are_int32_padded_to_the_smallest_bucket(encoder: Encoder) -> None:
    batch = encoder.encode_queries(["where is my order", "usb c charger"])
    for arr in (batch.input_ids, batch.attention_mask, batch.token_type_ids):
        assert arr.dtype == np.int32
        assert arr.shape == (2, 16)
    assert batch.input_ids[0, 0] == CLS_ID
    assert batch.input_ids[0, batch.lengths[0] - 1] == SEP_ID
    np.testing.assert_array_equal(batch.attention_mask.sum(axis=1), batch.lengths)
    assert not batch.token_type_ids.any()
    assert not batch.truncated.any()


def test_longer_query_moves_to_the_next_bucket(encoder: Encoder) -> None:
    text = " ".join(["word"] * 20)
    batch = encoder.encode_queries([text])
    assert batch.seq_len == 32
    assert batch.lengths[0] == 22


def test_overlong_query_is_truncated_and_flagged(encoder: Encoder) -> None:
    batch = encoder.encode_queries([" ".join(["word"] * 100), "short"])
    assert batch.seq_len == 32
    assert batch.lengths[0] == 32
    assert batch.input_ids[0, -1] == SEP_ID
    assert batch.truncated.tolist() == [True, False]


def test_pairs_carry_token_types(encoder: Encoder) -> None:
    batch = encoder.encode_pairs(["title sony headphones"], ["title sony wh1000"])
    n = batch.lengths[0]
    ids, types = batch.input_ids[0, :n], batch.token_type_ids[0, :n]
    seps = np.flatnonzero(ids == SEP_ID)
    assert ids[0] == CLS_ID and len(seps) == 2 and seps[1] == n - 1
    assert not types[: seps[0] + 1].any()
    assert types[seps[0] + 1 :].all()
    assert batch.seq_len == 64


def test_long_pairs_truncate_longest_first_and_keep_both_sides(encoder: Encoder) -> None:
    left = "title " + " ".join(["alpha"] * 300)
    right = "title short right"
    batch = encoder.encode_pairs([left, "a"], [right, "b"])
    assert batch.seq_len == 128
    assert batch.truncated.tolist() == [True, False]
    ids = batch.input_ids[0]
    seps = np.flatnonzero(ids == SEP_ID)
    assert len(seps) == 2 and seps[1] == 127
    # The short right side survives whole: only the long left side was cut.
    assert batch.token_type_ids[0].sum() == 3 + 1  # "title short right" + [SEP]


def test_encode_products_uses_the_shared_serialization(encoder: Encoder) -> None:
    a = encoder.encode_products([{"name": "Sony X", "price": 10}], [{"title": "sony x"}])
    b = encoder.encode_pairs(["title sony x price 10"], ["title sony x"])
    np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_pad_rows_adds_fillers_up_to_a_batch_bucket(encoder: Encoder) -> None:
    batch = encoder.encode_queries(["a", "b", "c"]).pad_rows(8)
    assert batch.batch_size == 8
    assert (batch.input_ids[3:, :2] == [CLS_ID, SEP_ID]).all()
    assert (batch.attention_mask[3:].sum(axis=1) == 2).all()
    with pytest.raises(ValueError):
        batch.pad_rows(4)


def test_empty_batch_is_refused(encoder: Encoder) -> None:
    with pytest.raises(ValueError):
        encoder.encode_queries([])
    with pytest.raises(ValueError):
        encoder.encode_pairs(["a"], [])
