"""Training data from /work/shared/data: product pairs as given, intent labels by explicit rules.

Duplicate head: the ER-Magellan (Ditto/DeepMatcher) train/valid/test splits, used as given; test
is only ever evaluated. Intent head: no public set has coarse e-commerce intents, so labels are
derived from the sources by the rules below (also written into the model card):

- `product`: real Amazon ESCI queries (QueryNER) that are not media (below); all WANDS queries.
- `media`: QueryNER queries whose entities are all `content` (titles of books, films, music), or
  that carry a `content` entity and whose product-type words are all media words (dvd, book, ...).
- `help`: every Bitext customer-service instruction; CLINC150 intents about orders, payments,
  rewards and account transactions (`HELP_CLINC_INTENTS`).
- `other`: CLINC150 out-of-scope queries and the other CLINC150 intents (small talk, travel,
  weather, ...), capped per intent so they do not swamp the shopping classes.

CLINC150 `order`, `shopping_list` and `shopping_list_update` are left out: they are assistant
commands about buying ("order me more lysol") that are neither a search nor a support request.
Splits: QueryNER and CLINC150 keep their own train/validation/test; WANDS and Bitext have none,
so a stable hash of the text assigns 80/10/10.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streamer.model.serialize import parse_ditto_record, serialize_product

DEFAULT_DATA_DIR = Path("/work/shared/data")
PAIR_DATASETS: tuple[str, ...] = ("Walmart-Amazon", "Abt-Buy", "Amazon-Google")
SPLITS: tuple[str, ...] = ("train", "valid", "test")

HELP_CLINC_INTENTS = frozenset(
    {
        "order_status",
        "card_declined",
        "pay_bill",
        "bill_balance",
        "bill_due",
        "redeem_rewards",
        "rewards_balance",
        "report_fraud",
        "report_lost_card",
        "freeze_account",
        "transactions",
        "spending_history",
    }
)
EXCLUDED_CLINC_INTENTS = frozenset({"order", "shopping_list", "shopping_list_update"})
# Per-intent cap for the non-commerce CLINC150 intents in the `other` class, per split.
OTHER_CAP = {"train": 20, "valid": 4, "test": 8}

MEDIA_WORDS = frozenset(
    {
        "movie",
        "movies",
        "film",
        "films",
        "dvd",
        "dvds",
        "bluray",
        "blu",
        "ray",
        "season",
        "seasons",
        "episode",
        "episodes",
        "book",
        "books",
        "novel",
        "novels",
        "paperback",
        "hardcover",
        "audiobook",
        "audible",
        "ebook",
        "cd",
        "cds",
        "vinyl",
        "album",
        "soundtrack",
        "comic",
        "comics",
        "manga",
        "kindle",
    }
)

# QueryNER integer tags (README of queryner-esci): 7/8 = B/I-content, 9/10 = core_product_type.
_CONTENT_TAGS = frozenset({7, 8})
_PRODUCT_TYPE_TAGS = frozenset({9, 10})
_QUERYNER_FILES = {"train": "train", "valid": "validation", "test": "test"}
_CLINC_KEYS = {
    "train": ("train", "oos_train"),
    "valid": ("val", "oos_val"),
    "test": ("test", "oos_test"),
}


@dataclass(frozen=True)
class IntentExample:
    """One query with its derived coarse intent and where it came from."""

    text: str
    label: str
    source: str


@dataclass(frozen=True)
class PairExample:
    """One product pair, both sides already serialized with `serialize_product`."""

    left: str
    right: str
    label: int
    dataset: str


def hash_split(text: str) -> str:
    """Stable 80/10/10 train/valid/test assignment for sources that ship no split."""
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 10
    return "test" if bucket == 9 else "valid" if bucket == 8 else "train"


def queryner_label(tokens: list[str], tags: list[int]) -> str:
    """`media` or `product` for one QueryNER query, by the rule in the module docstring."""
    has_content = any(t in _CONTENT_TAGS for t in tags)
    if not has_content:
        return "product"
    if all(t in _CONTENT_TAGS or t == 0 for t in tags):
        return "media"
    type_words = [w for w, t in zip(tokens, tags, strict=True) if t in _PRODUCT_TYPE_TAGS]
    if type_words and all(w in MEDIA_WORDS for w in type_words):
        return "media"
    return "product"


def clinc_label(intent: str) -> str | None:
    """Coarse label for a CLINC150 intent, or None where the intent is left out."""
    if intent in EXCLUDED_CLINC_INTENTS:
        return None
    if intent in HELP_CLINC_INTENTS:
        return "help"
    return "other"


def _queryner(root: Path, split: str) -> Iterable[IntentExample]:
    path = root / "queryner-esci" / "text-and-tags" / f"{_QUERYNER_FILES[split]}.json"
    for ex in json.loads(path.read_text())["examples"]:
        label = queryner_label(ex["tokens"], ex["ner_tags"])
        yield IntentExample(" ".join(ex["tokens"]), label, "queryner-esci")


def _wands(root: Path, split: str) -> Iterable[IntentExample]:
    with (root / "wands" / "query.csv").open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            text = row["query"].strip()
            if text and hash_split(text) == split:
                yield IntentExample(text, "product", "wands")


def _bitext(root: Path, split: str) -> Iterable[IntentExample]:
    path = root / "bitext-customer-support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            text = row["instruction"].strip()
            if text and hash_split(text) == split:
                yield IntentExample(text, "help", "bitext")


def _clinc(root: Path, split: str, other_cap: int | None = None) -> Iterable[IntentExample]:
    data = json.loads((root / "clinc150" / "data_full.json").read_text())
    cap = OTHER_CAP[split] if other_cap is None else other_cap
    taken: dict[str, int] = {}
    for key in _CLINC_KEYS[split]:
        for text, intent in data[key]:
            label = clinc_label(intent)
            if label is None:
                continue
            if label == "other" and intent != "oos":
                taken[intent] = taken.get(intent, 0) + 1
                if taken[intent] > cap:
                    continue
            yield IntentExample(text, label, f"clinc150:{intent}")


def content_spans(tokens: list[str], tags: list[int]) -> list[str]:
    """The `content` entity spans of one QueryNER query (B-content then I-content tokens)."""
    spans: list[list[str]] = []
    for word, tag in zip(tokens, tags, strict=True):
        if tag == 7 or (tag == 8 and not spans):
            spans.append([word])
        elif tag == 8 and spans:
            spans[-1].append(word)
        elif spans and spans[-1]:
            spans.append([])
    return [" ".join(s) for s in spans if s]


def media_span_examples(root: Path = DEFAULT_DATA_DIR, min_words: int = 2) -> list[IntentExample]:
    """Extra `media` training queries: the content spans of QueryNER train queries.

    A content span on its own is an all-`content` query, which the labelling rule calls `media`
    ("harry potter" out of "harry potter lego set"), so these follow the same rule as the labels.
    Spans shorter than `min_words` (single words such as "dog" or "georgia" read as product
    searches as often as titles), spans that already occur as a training query, and duplicates
    are left out. Train split only.
    """
    path = root / "queryner-esci" / "text-and-tags" / f"{_QUERYNER_FILES['train']}.json"
    examples = json.loads(path.read_text())["examples"]
    seen = {" ".join(ex["tokens"]) for ex in examples}
    out: list[IntentExample] = []
    for ex in examples:
        for span in content_spans(ex["tokens"], ex["ner_tags"]):
            if span not in seen and len(span.split()) >= min_words:
                seen.add(span)
                out.append(IntentExample(span, "media", "queryner-esci:content-span"))
    return out


def load_intent_split(
    split: str, root: Path = DEFAULT_DATA_DIR, *, other_cap: int | None = None
) -> list[IntentExample]:
    """All intent examples of one split (train/valid/test) from every source, in a fixed order.

    `other_cap` overrides the per-intent cap of the non-commerce CLINC150 intents (`OTHER_CAP`);
    training may take more of them than the evaluation splits hold, never the reverse.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    out: list[IntentExample] = []
    for source in (_queryner, _wands, _bitext):
        out.extend(source(root, split))
    out.extend(_clinc(root, split, other_cap))
    return out


def load_pair_split(
    dataset: str,
    split: str,
    root: Path = DEFAULT_DATA_DIR,
    *,
    summarize: bool = True,
    derive_model: bool = True,
) -> list[PairExample]:
    """One ER-Magellan split as given, both records re-serialized for the model.

    `summarize`/`derive_model` are passed to `serialize_product`; serving uses the defaults.
    """
    if dataset not in PAIR_DATASETS or split not in SPLITS:
        raise ValueError(f"unknown dataset/split {dataset!r}/{split!r}")
    out = []
    path = root / "ditto-er-magellan" / dataset / f"{split}.txt"
    with path.open() as f:
        for line in f:
            left, right, label = line.rstrip("\n").split("\t")
            out.append(
                PairExample(
                    serialize_product(
                        parse_ditto_record(left), summarize=summarize, derive_model=derive_model
                    ),
                    serialize_product(
                        parse_ditto_record(right), summarize=summarize, derive_model=derive_model
                    ),
                    int(label),
                    dataset,
                )
            )
    return out
