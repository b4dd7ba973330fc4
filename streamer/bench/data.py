"""Real benchmark payloads from ../shared/data: search queries and product pairs.

Load must look like production traffic: real query lengths and vocabulary (tokenizer cost and
shape buckets depend on them) and real product records (long descriptions push pairs into the
large buckets). Nothing here is synthetic except the product ids, which the ditto files lack.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# ditto serializes each benchmark with its own attribute names; map them onto one product shape.
# Canonical attribute names (streamer.model.serialize, shared with training) -> event fields.
_EVENT_FIELD = {"title": "title", "brand": "brand", "type": "product_type",
                "description": "description", "price": "price",
                "modelno": "model_number"}  # fmt: skip
PAIR_DATASETS = ("Walmart-Amazon", "Abt-Buy", "Amazon-Google")
_ASIN_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


SAMPLE_DATA_DIR = Path(__file__).resolve().parent / "sample_data"
_said_sample = False


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where the data sets live: argument, else STREAMER_DATA_DIR, else ../shared/data.

    A clone without ../shared/data gets the bundled sample (`sample_data/`, same layout).
    """
    global _said_sample
    if override:
        return Path(override)
    env = os.environ.get("STREAMER_DATA_DIR")
    if env:
        return Path(env)
    shared = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if (shared / "ditto-er-magellan").is_dir():
        return shared
    if not _said_sample:
        _said_sample = True
        print(f"{shared} not found: using the bundled sample {SAMPLE_DATA_DIR}", file=sys.stderr)
    return SAMPLE_DATA_DIR


@dataclass(frozen=True, slots=True)
class Product:
    """One side of a product pair, as an upstream catalogue service would send it."""

    id: str
    title: str
    brand: str
    product_type: str
    description: str
    price: float | None
    model_number: str = ""

    def as_dict(self) -> dict[str, object]:
        """Plain dict for the record codec."""
        return {
            "id": self.id,
            "title": self.title,
            "brand": self.brand,
            "product_type": self.product_type,
            "description": self.description,
            "price": self.price,
            "model_number": self.model_number,
        }


@dataclass(frozen=True, slots=True)
class ProductPair:
    """Two products and the ditto label (1 = same product); the label is kept for sanity checks."""

    left: Product
    right: Product
    label: int


def synthetic_asin(text: str) -> str:
    """Stable ASIN-like id (B0 + 8 base-36 chars) from the serialized record: same text, same id."""
    digest = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    chars = []
    for _ in range(8):
        digest, rem = divmod(digest, 36)
        chars.append(_ASIN_ALPHABET[rem])
    return "B0" + "".join(chars)


def parse_ditto_record(serialized: str) -> Product:
    """Parse `COL attr VAL value COL attr VAL value ...` into a Product (unknown attrs ignored).

    Uses the training code's parser and attribute aliases, so benchmark events carry exactly
    the attributes the model was trained on.
    """
    from streamer.model.serialize import ALIASES
    from streamer.model.serialize import parse_ditto_record as parse_attributes

    fields: dict[str, str] = {}
    for attr, value in parse_attributes(serialized).items():
        key = _EVENT_FIELD.get(ALIASES.get(attr.lower(), ""))
        if key is not None and key not in fields:
            fields[key] = value.strip()
    price = _parse_price(fields.get("price", ""))
    return Product(
        id=synthetic_asin(serialized.strip()),
        title=fields.get("title", ""),
        brand=fields.get("brand", ""),
        product_type=fields.get("product_type", ""),
        description=fields.get("description", ""),
        price=price,
        model_number=fields.get("model_number", ""),
    )


def _parse_price(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").replace("$", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_ditto_line(line: str) -> ProductPair:
    """One ditto line (`left TAB right TAB label`) into a ProductPair; raises ValueError if malformed."""
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 3:
        raise ValueError(f"expected 3 TAB-separated fields, got {len(parts)}")
    return ProductPair(parse_ditto_record(parts[0]), parse_ditto_record(parts[1]), int(parts[2]))


def load_pairs(
    root: str | os.PathLike[str] | None = None, splits: tuple[str, ...] = ("test", "valid")
) -> list[ProductPair]:
    """All product pairs of the held-out ditto splits of the three magellan benchmarks."""
    base = data_dir(root) / "ditto-er-magellan"
    pairs: list[ProductPair] = []
    for dataset in PAIR_DATASETS:
        for split in splits:
            path = base / dataset / f"{split}.txt"
            if not path.exists() and split != splits[0]:
                continue  # the bundled sample has the first split only
            with path.open(encoding="utf-8") as fh:
                pairs.extend(parse_ditto_line(line) for line in fh if line.strip())
    return pairs


def load_shopping_queries(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Real shopping queries: QueryNER (Amazon ESCI) tokens re-joined, plus Wayfair WANDS queries."""
    base = data_dir(root)
    queries: list[str] = []
    for split in ("train", "validation", "test"):
        path = base / "queryner-esci" / "text-and-tags" / f"{split}.json"
        if not path.exists() and base == SAMPLE_DATA_DIR:
            continue  # not in the bundled sample (see its README)
        with path.open(encoding="utf-8") as fh:
            queries.extend(" ".join(ex["tokens"]) for ex in json.load(fh)["examples"])
    with (base / "wands" / "query.csv").open(encoding="utf-8", newline="") as fh:
        queries.extend(row["query"] for row in csv.DictReader(fh, delimiter="\t"))
    return [q for q in queries if q.strip()]


def load_help_utterances(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Help-style utterances typed into a search box: Bitext support requests, CLINC commerce intents."""
    base = data_dir(root)
    path = base / "bitext-customer-support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        texts = [row["instruction"] for row in csv.DictReader(fh)]
    commerce = {"order", "order_status", "shopping_list", "shopping_list_update", "card_declined"}
    with (base / "clinc150" / "data_full.json").open(encoding="utf-8") as fh:
        clinc = json.load(fh)
    texts.extend(
        text for split in ("test", "val") for text, intent in clinc[split] if intent in commerce
    )
    return [t for t in texts if t.strip()]


def mix_queries(
    shopping: list[str], help_texts: list[str], help_share: float, seed: int
) -> list[str]:
    """Shuffle shopping queries with a given share of help utterances (deterministic per seed)."""
    if not 0.0 <= help_share < 1.0:
        raise ValueError("help_share must be in [0, 1)")
    rng = random.Random(seed)
    n_help = round(len(shopping) * help_share / (1.0 - help_share))
    mixed = list(shopping) + rng.choices(help_texts, k=n_help) if help_texts else list(shopping)
    rng.shuffle(mixed)
    return mixed


class QuerySource:
    """Endless, deterministic stream of real queries (cycled) for the load generator."""

    def __init__(
        self, root: str | os.PathLike[str] | None = None, help_share: float = 0.1, seed: int = 7
    ) -> None:
        self.queries = mix_queries(
            load_shopping_queries(root), load_help_utterances(root), help_share, seed
        )

    def __iter__(self) -> Iterator[str]:
        while True:
            yield from self.queries


class PairSource:
    """Endless, deterministic stream of real product pairs (cycled, shuffled once)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, seed: int = 7) -> None:
        self.pairs = load_pairs(root)
        random.Random(seed).shuffle(self.pairs)

    def __iter__(self) -> Iterator[ProductPair]:
        while True:
            yield from self.pairs
