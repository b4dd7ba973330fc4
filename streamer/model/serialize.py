"""Product-to-text serialization for the duplicate head: one function for training and serving.

The ER-Magellan training pairs come as `COL <attr> VAL <value> ...` with lower-cased values and
dataset-specific attribute names (`name`/`title`, `manufacturer`/`brand`, `category`). Training
parses those records and re-serializes them with `serialize_product`, so the text the model saw in
training is byte-for-byte what serving builds from a product event's fields.

The serialized form is `title <v> brand <v> type <v> model <v> price <v> description <v>`: one
word-piece per field name instead of Ditto's three (`COL title VAL`), which cuts about a fifth of
the tokens of a Walmart-Amazon pair while keeping the field boundaries visible to the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Serialization format version: part of the artifact, checked by the runner's users.
SERIALIZATION = "fields-v1"

# Canonical attribute order: the identifying fields first so truncation cuts the description.
CANONICAL_ORDER: tuple[str, ...] = ("title", "brand", "type", "modelno", "price", "description")

# The word that introduces each field in the serialized text (single word-pieces in the vocab).
FIELD_WORDS: dict[str, str] = {
    "title": "title",
    "brand": "brand",
    "type": "type",
    "modelno": "model",
    "price": "price",
    "description": "description",
}

# Dataset and event spellings mapped onto the canonical attribute names.
ALIASES: dict[str, str] = {
    "title": "title",
    "name": "title",
    "brand": "brand",
    "manufacturer": "brand",
    "type": "type",
    "category": "type",
    "product_type": "type",
    "modelno": "modelno",
    "model": "modelno",
    "model_number": "modelno",
    "price": "price",
    "description": "description",
}

_COL_RE = re.compile(r"COL (\S+) VAL ?")
_SPACES = re.compile(r"\s+")


def canonical_fields(product: Mapping[str, object]) -> dict[str, str]:
    """Map a product's fields onto the canonical names, dropping unknown and empty ones."""
    out: dict[str, str] = {}
    for key, value in product.items():
        name = ALIASES.get(key.lower())
        if name is None or value is None:
            continue
        text = _SPACES.sub(" ", str(value)).strip().lower()
        if text and name not in out:
            out[name] = text
    return out


def serialize_product(product: Mapping[str, object]) -> str:
    """Serialize a product as `title ... brand ... price ...` in canonical order, lower-cased."""
    fields = canonical_fields(product)
    return " ".join(f"{FIELD_WORDS[k]} {fields[k]}" for k in CANONICAL_ORDER if k in fields)


def parse_ditto_record(record: str) -> dict[str, str]:
    """Parse one ER-Magellan `COL a VAL v ...` record into an attribute -> value dict."""
    parts = _COL_RE.split(record.strip())
    # re.split with one group yields ['', attr1, value1, attr2, value2, ...]
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
