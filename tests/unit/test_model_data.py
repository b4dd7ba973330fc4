"""Product serialization and the intent labelling rules."""

from __future__ import annotations

import pytest

from streamer.model.serialize import parse_ditto_record, serialize_product
from streamer.training.data import clinc_label, hash_split, queryner_label

RECORD = "COL title VAL sumdex slr camera sling pack COL category VAL mp3 accessories COL brand VAL sumdex COL modelno VAL 144952 COL price VAL 39.99 "


def test_parse_ditto_record_reads_every_attribute_including_empty() -> None:
    fields = parse_ditto_record("COL name VAL lg washer COL description VAL  COL price VAL 9.5")
    assert fields == {"name": "lg washer", "description": "", "price": "9.5"}


def test_serialization_is_canonical_lowercase_and_drops_empty_fields() -> None:
    text = serialize_product(parse_ditto_record(RECORD))
    assert (
        text
        == "title sumdex slr camera sling pack brand sumdex type mp3 accessories model 144952 price 39.99"
    )
    event = {"Title": "  Sumdex SLR  Camera Sling Pack", "brand": "SUMDEX", "description": None}
    assert serialize_product(event) == "title sumdex slr camera sling pack brand sumdex"


def test_aliases_map_dataset_spellings_to_the_same_text() -> None:
    a = serialize_product({"name": "x", "manufacturer": "y", "category": "z"})
    b = serialize_product({"title": "x", "brand": "y", "type": "z"})
    assert a == b


@pytest.mark.parametrize(
    ("tokens", "tags", "label"),
    [
        (["white", "duvet", "cover", "queen"], [3, 9, 10, 1], "product"),
        (["freedom", "writers"], [7, 8], "media"),
        (["hocus", "pocus", "dvd"], [7, 8, 9], "media"),
        (["region", "free", "dvd", "player"], [7, 8, 9, 10], "product"),
        (["the", "mentalist"], [0, 7], "media"),
    ],
)
def test_queryner_rules(tokens: list[str], tags: list[int], label: str) -> None:
    assert queryner_label(tokens, tags) == label


def test_clinc_rules() -> None:
    assert clinc_label("order_status") == "help"
    assert clinc_label("oos") == "other"
    assert clinc_label("weather") == "other"
    assert clinc_label("shopping_list") is None


def test_hash_split_is_stable_and_roughly_80_10_10() -> None:
    splits = [hash_split(f"query {i}") for i in range(2000)]
    assert splits == [hash_split(f"query {i}") for i in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85
    assert 0.07 < splits.count("test") / 2000 < 0.13


def test_threshold_sits_between_scores_and_maximizes_f1() -> None:
    import numpy as np

    from streamer.training.metrics import choose_threshold

    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.3, 0.6, 0.8, 0.5, 0.9])
    t = choose_threshold(y, s)
    assert 0.5 < t < 0.6
    assert not np.isin(t, s)
