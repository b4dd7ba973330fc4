"""Product serialization and the intent labelling rules."""

from __future__ import annotations

import json
from pathlib import Path

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


# --- fields-v2: summarized descriptions and derived model codes ---------------------------------


def test_summary_drops_title_words_repeats_stop_words_and_punctuation() -> None:
    from streamer.model.serialize import summarize_description

    title = "lg 24 ' lds4821ww dishwasher"
    desc = "lg 24 ' lds4821ww dishwasher , xl tall tub cleans up to 16 place settings tall tub"
    assert summarize_description(desc, title) == "xl tall tub cleans up 16 place settings"
    assert summarize_description(desc, title, max_words=3) == "xl tall tub"
    assert summarize_description("the , and .", "x") == ""


@pytest.mark.parametrize(
    ("title", "codes"),
    [
        ("denon dvd-2930ci dvd player dvd2930ci", ["dvd2930ci"]),
        ("lg 24 ' lds4821ww semi integrated dishwasher lds4821wh", ["lds4821ww", "lds4821wh"]),
        ("speck case for apple 13 ' macbook mb13-pnk-see-v2", ["mb13pnkseev2"]),
        ("hdmi 1080p 36-bit 240pin 4th6th 2.4ghz 5400rpm cable", []),
        ("sony camera 12345 x1", []),
        ("a1000 b2000 c3000 d4000", ["a1000", "b2000", "c3000"]),
    ],
)
def test_model_codes_are_code_like_words_without_units(title: str, codes: list[str]) -> None:
    from streamer.model.serialize import model_codes

    assert model_codes(title) == codes


def test_fields_v2_serialization() -> None:
    record = (
        "COL name VAL denon dvd-2930ci dvd player COL description VAL denon dvd player , "
        "progressive scan black COL price VAL 448.0"
    )
    fields = parse_ditto_record(record)
    assert serialize_product(fields) == (
        "title denon dvd-2930ci dvd player model dvd2930ci price 448.0 "
        "description progressive scan black"
    )
    # fields-v1 (experiments only): the description as given, no derived model field.
    assert serialize_product(fields, summarize=False, derive_model=False) == (
        "title denon dvd-2930ci dvd player price 448.0 "
        "description denon dvd player , progressive scan black"
    )
    # An explicit model number (the event's model_number, the dataset's modelno) wins as given.
    explicit = serialize_product({"title": "denon dvd-2930ci", "model_number": "DVD-2930CI"})
    assert explicit == "title denon dvd-2930ci model dvd-2930ci"
    # A description that only repeats the title is dropped with its field word.
    assert serialize_product({"title": "sony tv", "description": "Sony TV"}) == "title sony tv"


def test_serving_fields_serialize_like_training_records() -> None:
    # The keys streamer.pipeline.paths.product_fields builds from a decoded event.
    event = {
        "title": "Sumdex SLR Camera Sling Pack",
        "brand": "Sumdex",
        "product_type": "MP3 Accessories",
        "price": 39.99,
        "description": None,
        "model_number": "144952",
    }
    assert serialize_product(event) == serialize_product(parse_ditto_record(RECORD))


def test_content_spans_split_on_other_tags() -> None:
    from streamer.training.data import content_spans

    assert content_spans(["harry", "potter", "lego", "set"], [7, 8, 9, 10]) == ["harry potter"]
    assert content_spans(["a", "b", "x", "c"], [7, 8, 0, 7]) == ["a b", "c"]
    assert content_spans(["x", "y"], [0, 8]) == ["y"]
    assert content_spans(["white", "cover"], [3, 9]) == []


def test_media_span_examples_follow_the_all_content_rule(tmp_path: Path) -> None:
    from streamer.training.data import media_span_examples

    data = tmp_path / "queryner-esci" / "text-and-tags"
    data.mkdir(parents=True)
    examples = [
        {"tokens": ["harry", "potter", "lego", "set"], "ner_tags": [7, 8, 9, 10]},
        {"tokens": ["fortnite", "blanket"], "ner_tags": [7, 9]},  # one word: left out
        {"tokens": ["harry", "potter"], "ner_tags": [7, 8]},  # already a query: left out
        {"tokens": ["star", "wars", "mug", "star", "wars"], "ner_tags": [7, 8, 9, 7, 8]},
        {"tokens": ["toy", "story", "4", "dvd"], "ner_tags": [7, 8, 8, 9]},
    ]
    (data / "train.json").write_text(json.dumps({"examples": examples}))
    out = media_span_examples(tmp_path)
    assert [e.text for e in out] == ["star wars", "toy story 4"]
    assert {e.label for e in out} == {"media"}
    assert all(queryner_label(e.text.split(), [7] + [8] * (len(e.text.split()) - 1)) == "media"
               for e in out)  # fmt: skip
