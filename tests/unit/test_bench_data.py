"""Parsing of the benchmark payloads: ditto product records, query mixing."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.bench import data

WALMART = (
    "COL title VAL sumdex slr camera sling pack COL category VAL mp3 accessories "
    "COL brand VAL sumdex COL modelno VAL 144952 COL price VAL 39.99 "
)
ABT = "COL name VAL whirlpool white washer COL description VAL  COL price VAL  "


def test_ditto_record_maps_dataset_names_onto_one_product_shape() -> None:
    p = data.parse_ditto_record(WALMART)
    assert p.title == "sumdex slr camera sling pack"
    assert p.brand == "sumdex"
    assert p.product_type == "mp3 accessories"
    assert p.price == pytest.approx(39.99)
    assert p.description == ""


def test_ditto_record_with_empty_values_and_aliases() -> None:
    p = data.parse_ditto_record(ABT)
    assert p.title == "whirlpool white washer"
    assert p.description == ""
    assert p.price is None


def test_manufacturer_is_the_brand() -> None:
    p = data.parse_ditto_record(
        "COL title VAL motu dp5 COL manufacturer VAL motu COL price VAL 395.0"
    )
    assert (p.brand, p.price) == ("motu", 395.0)


def test_synthetic_ids_are_stable_asin_like_and_distinct() -> None:
    a, b = data.synthetic_asin(WALMART), data.synthetic_asin(ABT)
    assert a == data.synthetic_asin(WALMART)
    assert a != b
    assert len(a) == 10 and a.startswith("B0") and a[2:].isalnum() and a[2:].upper() == a[2:]


def test_ditto_line_parses_both_sides_and_label() -> None:
    pair = data.parse_ditto_line(f"{WALMART}\t{ABT}\t1\n")
    assert pair.label == 1
    assert pair.left.brand == "sumdex"
    assert pair.right.title == "whirlpool white washer"
    assert pair.left.id != pair.right.id


def test_malformed_ditto_line_is_rejected() -> None:
    with pytest.raises(ValueError):
        data.parse_ditto_line("only one field\n")


def test_mix_queries_adds_the_requested_share_deterministically() -> None:
    shopping = [f"q{i}" for i in range(90)]
    help_texts = ["where is my order", "cancel my order"]
    mixed = data.mix_queries(shopping, help_texts, 0.1, seed=3)
    assert len(mixed) == 100
    assert sum(t in help_texts for t in mixed) == 10
    assert mixed == data.mix_queries(shopping, help_texts, 0.1, seed=3)
    with pytest.raises(ValueError):
        data.mix_queries(shopping, help_texts, 1.0, seed=3)


def test_data_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMER_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    assert data.data_dir("/elsewhere") == Path("/elsewhere")


def test_bundled_sample_is_the_fallback_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMER_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "REPO_ROOT", Path("/nonexistent/clone"))
    assert data.data_dir() == data.SAMPLE_DATA_DIR
    pairs = data.load_pairs()
    assert len(pairs) == 3 * 200 and {p.label for p in pairs} == {0, 1}
    assert len(data.load_shopping_queries()) == 480
    assert len(data.load_help_utterances()) == 400 + 250
    sample_bytes = sum(f.stat().st_size for f in data.SAMPLE_DATA_DIR.rglob("*") if f.is_file())
    assert sample_bytes < 1_000_000
    assert next(iter(data.QuerySource(seed=1))) and next(iter(data.PairSource(seed=1))).left.title


@pytest.mark.skipif(
    not (data.data_dir() / "queryner-esci").is_dir(), reason="shared data not present"
)
def test_real_data_loads() -> None:
    pairs = data.load_pairs(splits=("test",))
    assert len(pairs) == 2049 + 1916 + 2293
    assert all(p.left.id and p.right.id for p in pairs)
    queries = data.load_shopping_queries()
    assert len(queries) == 9705 + 480
    assert len(data.load_help_utterances()) > 4514
