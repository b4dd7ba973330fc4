"""Product-to-text serialization for the duplicate head: one function for training and serving.

The ER-Magellan training pairs come as `COL <attr> VAL <value> ...` with lower-cased values and
dataset-specific attribute names (`name`/`title`, `manufacturer`/`brand`, `category`). Training
parses those records and re-serializes them with `serialize_product`, so the text the model saw in
training is byte-for-byte what serving builds from a product event's fields.

The serialized form is `title <v> brand <v> type <v> model <v> price <v> description <v>`: one
word-piece per field name instead of Ditto's three (`COL title VAL`), which cuts about a fifth of
the tokens of a Walmart-Amazon pair while keeping the field boundaries visible to the model.

`fields-v2` adds two stateless steps (no fitted statistics, so serving needs nothing but this
module), both in the spirit of Ditto's `summarize` and `dk` options:

- the description is summarized: words already in the title, repeated words, stop words and bare
  punctuation are dropped, and at most `DESCRIPTION_WORDS` words are kept in their order (Abt-Buy
  descriptions mostly repeat the title before the specifications; a pair then fits the 128 bucket
  instead of 256);
- a product without a model number gets one derived from its title: the code-like words (letters
  and at least two digits, not a number with units such as `1080p`, `36-bit`, `240pin`), hyphens and
  slashes removed (`dvd-2930ci` -> `dvd2930ci`), so both sides of a pair carry a `model` field
  to compare even where the source has none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Serialization format version: part of the artifact, checked by the runner's users.
SERIALIZATION = "fields-v2"

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

# Description words kept by the summary (fields-v2): the specifications after the title's words.
DESCRIPTION_WORDS = 32
# At most this many model codes are derived from a title that names several.
MAX_DERIVED_CODES = 3

STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "our",
        "that",
        "the",
        "this",
        "to",
        "with",
        "you",
        "your",
    ]
)

_COL_RE = re.compile(r"COL (\S+) VAL ?")
_SPACES = re.compile(r"\s+")
_CODE_JOINERS = re.compile(r"[-/]")
_LETTER_RUNS = re.compile(r"[a-z]+")
# Numbers whose letters are all units or ordinals (1080p, 36bit, 240pin, 4th6th, 1920x1080) are
# specifications, not codes.
UNIT_WORDS = frozenset(
    [
        "p",
        "i",
        "k",
        "x",
        "bit",
        "bits",
        "fps",
        "gb",
        "mb",
        "tb",
        "kb",
        "hz",
        "khz",
        "mhz",
        "ghz",
        "mm",
        "cm",
        "in",
        "inch",
        "ft",
        "w",
        "v",
        "mah",
        "mp",
        "lb",
        "lbs",
        "oz",
        "ms",
        "pin",
        "channel",
        "ch",
        "pack",
        "pk",
        "pcs",
        "st",
        "nd",
        "rd",
        "th",
        "gen",
        "rpm",
        "lic",
        "user",
        "users",
        "yr",
    ]
)


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


def summarize_description(description: str, title: str, max_words: int = DESCRIPTION_WORDS) -> str:
    """The description's first `max_words` informative words, in order (see module docstring)."""
    seen = set(title.split())
    kept: list[str] = []
    for word in description.split():
        if len(kept) >= max_words:
            break
        if word in seen or word in STOP_WORDS or not any(c.isalnum() for c in word):
            continue
        seen.add(word)
        kept.append(word)
    return " ".join(kept)


def model_codes(text: str, limit: int = MAX_DERIVED_CODES) -> list[str]:
    """Code-like words of `text` (model numbers), hyphens/slashes removed, first `limit` distinct."""
    codes: list[str] = []
    for word in text.split():
        code = _CODE_JOINERS.sub("", word.strip(".,;:()[]'\""))
        digits = sum(c.isdigit() for c in code)
        letters = sum(c.isalpha() for c in code)
        if len(code) < 5 or digits < 2 or letters < 1 or not code.isalnum():
            continue
        if code in codes or all(r in UNIT_WORDS for r in _LETTER_RUNS.findall(code)):
            continue
        codes.append(code)
        if len(codes) >= limit:
            break
    return codes


def serialize_product(
    product: Mapping[str, object], *, summarize: bool = True, derive_model: bool = True
) -> str:
    """Serialize a product as `title ... brand ... price ...` in canonical order, lower-cased.

    `summarize` and `derive_model` are the fields-v2 steps; serving always uses the defaults
    (turning them off gives the fields-v1 text, for experiments only).
    """
    fields = canonical_fields(product)
    title = fields.get("title", "")
    if summarize and "description" in fields:
        summary = summarize_description(fields["description"], title)
        if summary:
            fields["description"] = summary
        else:
            del fields["description"]
    if derive_model and "modelno" not in fields:
        codes = model_codes(title)
        if codes:
            fields["modelno"] = " ".join(codes)
    return " ".join(f"{FIELD_WORDS[k]} {fields[k]}" for k in CANONICAL_ORDER if k in fields)


def parse_ditto_record(record: str) -> dict[str, str]:
    """Parse one ER-Magellan `COL a VAL v ...` record into an attribute -> value dict."""
    parts = _COL_RE.split(record.strip())
    # re.split with one group yields ['', attr1, value1, attr2, value2, ...]
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
