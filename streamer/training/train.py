"""Fine-tune the multi-task model (intent + duplicate heads) on the shared data; write an artifact.

`python -m streamer.training.train [--out artifacts/minilm-multitask-v1]`. Designed for a shared
2-core CPU in about 20-30 minutes: embeddings and the lowest layers are frozen, batches are
length-grouped so padding costs little, and each epoch sees every positive pair but only a
share of the (plentiful) negatives, so all negatives are seen once over the run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from streamer.model.artifact import ModelMeta, load_trained, save_trained
from streamer.model.buckets import DEFAULT_BUCKETS
from streamer.training.data import (
    DEFAULT_DATA_DIR,
    PAIR_DATASETS,
    IntentExample,
    PairExample,
    load_intent_split,
    load_pair_split,
)
from streamer.training.metrics import choose_threshold, duplicate_metrics, intent_metrics
from streamer.training.model_card import render_model_card
from streamer.model.network import BACKBONE_NAME, MultiTaskBert, backbone_dir, build_pretrained
from streamer.model.serialize import SERIALIZATION
from streamer.model.tasks import Task
from streamer.model.tokenize import EncodedBatch, Encoder

_PUNCT = re.compile(r"[^\w\s']")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options; the defaults are the run reported in the model card."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None, help="default artifacts/<name>-<version>")
    parser.add_argument("--name", default="minilm-multitask")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--negative-share",
        type=float,
        default=0.5,
        help="share of the negative pairs drawn per epoch (disjoint across epochs)",
    )
    parser.add_argument("--intent-passes", type=float, default=1.0, help="passes over intents")
    parser.add_argument("--media-oversample", type=int, default=3)
    parser.add_argument("--pair-batch", type=int, default=16)
    parser.add_argument("--intent-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-5, help="backbone learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--freeze-layers", type=int, default=2, help="lowest layers kept frozen")
    parser.add_argument("--max-query-len", type=int, default=32)
    parser.add_argument("--max-pair-len", type=int, default=256)
    parser.add_argument(
        "--time-budget-min",
        type=float,
        default=28.0,
        help="training-phase budget: the LR schedule follows max(step, time) progress and "
        "training stops at the budget, so a busy shared CPU shortens the run, not the deadline",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--limit", type=int, default=0, help="smoke test: cap examples per split")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue from a trained artifact's weights (same label set) instead of MiniLM",
    )


def _limit(items: list[Any], n: int, rng: random.Random) -> list[Any]:
    if n <= 0 or len(items) <= n:
        return items
    return rng.sample(items, n)


def _strip_punct(text: str) -> str:
    # Queries typed into a search box rarely carry the punctuation of the help/CLINC sentences;
    # stripping it half the time keeps '?' from becoming the help signal.
    return " ".join(_PUNCT.sub(" ", text).split()) or text


class _Encoded:
    """A whole split tokenized once; batches are row slices cut to their longest row."""

    def __init__(self, batch: EncodedBatch) -> None:
        self.ids = torch.from_numpy(batch.input_ids)
        self.mask = torch.from_numpy(batch.attention_mask)
        self.types = torch.from_numpy(batch.token_type_ids)
        self.lengths = batch.lengths

    def take(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(rows))
        width = int(self.lengths[list(rows)].max())
        return self.ids[idx, :width], self.mask[idx, :width], self.types[idx, :width]


def _length_grouped(
    rows: list[int], lengths: np.ndarray, batch: int, rng: random.Random
) -> list[list[int]]:
    """Shuffle, sort within windows of 50 batches by length, cut into batches."""
    rng.shuffle(rows)
    window = batch * 50
    out: list[list[int]] = []
    for start in range(0, len(rows), window):
        chunk = sorted(rows[start : start + window], key=lambda r: int(lengths[r]))
        out.extend(chunk[i : i + batch] for i in range(0, len(chunk), batch))
    return out


def build_schedule(
    intent_labels: list[int],
    pair_labels: np.ndarray,
    intent_lengths: np.ndarray,
    pair_lengths: np.ndarray,
    media_rows: list[int],
    args: argparse.Namespace,
    rng: random.Random,
) -> list[tuple[Task, list[int]]]:
    """The shuffled list of (task, rows) batches for the whole run."""
    positives = [int(i) for i in np.flatnonzero(pair_labels == 1)]
    negatives = [int(i) for i in np.flatnonzero(pair_labels == 0)]
    rng.shuffle(negatives)
    per_epoch = math.ceil(len(negatives) * args.negative_share)
    intent_rows = list(range(len(intent_labels))) + media_rows * (args.media_oversample - 1)
    intent_per_epoch = math.ceil(len(intent_rows) * args.intent_passes / args.epochs)
    schedule: list[tuple[Task, list[int]]] = []
    for epoch in range(args.epochs):
        start = (epoch * per_epoch) % max(len(negatives), 1)
        neg = (negatives + negatives)[start : start + per_epoch]
        pair_batches = _length_grouped(positives + neg, pair_lengths, args.pair_batch, rng)
        rng.shuffle(intent_rows)
        chosen = (intent_rows * 2)[:intent_per_epoch]
        intent_batches = _length_grouped(chosen, intent_lengths, args.intent_batch, rng)
        epoch_batches = [(Task.DUPLICATE, b) for b in pair_batches]
        epoch_batches += [(Task.INTENT, b) for b in intent_batches]
        rng.shuffle(epoch_batches)
        schedule.extend(epoch_batches)
    return schedule


@torch.inference_mode()
def predict(
    model: nn.Module, enc: _Encoded, batch: int = 64, desc: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Intent probabilities (N, K) and duplicate probabilities (N,), length-sorted batches."""
    model.eval()
    order = np.argsort(enc.lengths, kind="stable")
    intent_out: np.ndarray | None = None
    dup_out = np.zeros(len(order), np.float32)
    for start in tqdm(range(0, len(order), batch), desc=desc, leave=False, disable=not desc):
        rows = [int(r) for r in order[start : start + batch]]
        intent, dup = model(*enc.take(rows))
        if intent_out is None:
            intent_out = np.zeros((len(order), intent.shape[-1]), np.float32)
        intent_out[rows] = torch.softmax(intent, -1).numpy()
        dup_out[rows] = torch.sigmoid(dup.squeeze(-1)).numpy()
    assert intent_out is not None
    return intent_out, dup_out


def freeze_lower(model: MultiTaskBert, layers: int) -> None:
    """Freeze embeddings and the lowest `layers` encoder layers (no grads, no optimizer state)."""
    bert = model.bert
    for p in bert.embeddings.parameters():
        p.requires_grad = False
    for layer in bert.encoder.layer[:layers]:
        for p in layer.parameters():
            p.requires_grad = False


def train(args: argparse.Namespace) -> Path:
    """Run the whole training + evaluation and write the artifact; returns its directory."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out_dir = args.out or Path("artifacts") / f"{args.name}-{args.version}"

    intents = {
        s: _limit(load_intent_split(s, args.data_dir), args.limit, rng)
        for s in ("train", "valid", "test")
    }
    labels = tuple(sorted({e.label for e in intents["train"]}))
    label_index = {name: i for i, name in enumerate(labels)}
    pairs = {
        (d, s): _limit(load_pair_split(d, s, args.data_dir), args.limit, rng)
        for d in PAIR_DATASETS
        for s in ("train", "valid", "test")
    }
    encoder = Encoder.from_files(
        backbone_dir() / "tokenizer.json", DEFAULT_BUCKETS, args.max_query_len, args.max_pair_len
    )

    train_texts = [_strip_punct(e.text) if rng.random() < 0.5 else e.text for e in intents["train"]]
    intent_enc = _Encoded(encoder.encode_queries(train_texts, bucketed=False))
    intent_y = torch.tensor([label_index[e.label] for e in intents["train"]])
    train_pairs = [p for d in PAIR_DATASETS for p in pairs[(d, "train")]]
    pair_enc = _Encoded(
        encoder.encode_pairs(
            [p.left for p in train_pairs], [p.right for p in train_pairs], bucketed=False
        )
    )
    pair_y = np.array([p.label for p in train_pairs], np.float32)
    media_rows = [i for i, e in enumerate(intents["train"]) if e.label == "media"]
    schedule = build_schedule(
        intent_y.tolist(), pair_y, intent_enc.lengths, pair_enc.lengths, media_rows, args, rng
    )

    if args.init_from is not None:
        model, previous = load_trained(args.init_from)
        if previous.labels != labels:
            raise SystemExit(
                f"--init-from labels {previous.labels} differ from the data's {labels}"
            )
    else:
        model = build_pretrained(len(labels))
    freeze_lower(model, args.freeze_layers)
    head_params = [*model.intent_head.parameters(), *model.duplicate_head.parameters()]
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": body_params, "lr": args.lr}, {"params": head_params, "lr": args.head_lr}],
        weight_decay=0.01,
    )
    total = len(schedule)
    budget = args.time_budget_min * 60.0
    train_started = time.monotonic()
    warm = 0.06
    ce, bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()
    model.train()
    bar = tqdm(schedule, desc="train", unit="batch", mininterval=5.0, file=sys.stderr)
    smoothed: dict[Task, float] = {}
    done = 0
    for task, rows in bar:
        progress = max(done / total, (time.monotonic() - train_started) / budget)
        if progress >= 1.0:
            break
        factor = min(progress / warm, (1.0 - progress) / (1.0 - warm))
        optimizer.param_groups[0]["lr"] = args.lr * factor
        optimizer.param_groups[1]["lr"] = args.head_lr * factor
        source = intent_enc if task == Task.INTENT else pair_enc
        intent_logits, dup_logit = model(*source.take(rows))
        if task == Task.INTENT:
            loss = ce(intent_logits, intent_y[rows])
        else:
            loss = bce(dup_logit.squeeze(-1), torch.from_numpy(pair_y[rows]))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done += 1
        value = loss.detach().item()
        smoothed[task] = 0.98 * smoothed.get(task, value) + 0.02 * value
        bar.set_postfix(
            intent=f"{smoothed.get(Task.INTENT, 0):.3f}",
            dup=f"{smoothed.get(Task.DUPLICATE, 0):.3f}",
        )
    bar.close()
    train_seconds = time.monotonic() - started

    metrics = evaluate(model, encoder, intents, pairs, labels)
    meta = ModelMeta(
        name=args.name,
        version=args.version,
        labels=labels,
        duplicate_threshold=metrics["duplicate"]["threshold"],
        max_query_len=encoder.max_query_len,
        max_pair_len=encoder.max_pair_len,
        serialization=SERIALIZATION,
        buckets=dict(DEFAULT_BUCKETS),
        backbone=model.config.to_diff_dict() | {"model_type": "bert"},
    )
    previous_seconds = 0.0
    if args.init_from is not None and (args.init_from / "eval.json").exists():
        prev = json.loads((args.init_from / "eval.json").read_text()).get("training", {})
        previous_seconds = float(prev.get("cumulative_train_seconds", prev.get("train_seconds", 0)))
    metrics["training"] = {
        "train_seconds": round(train_seconds, 1),
        "cumulative_train_seconds": round(previous_seconds + train_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "batches_planned": total,
        "batches_done": done,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "train_sizes": {
            "intent": dict(Counter(e.label for e in intents["train"])),
            "pairs": {d: len(pairs[(d, "train")]) for d in PAIR_DATASETS},
        },
    }
    card = render_model_card(meta, metrics, BACKBONE_NAME)
    save_trained(
        model,
        out_dir,
        meta,
        backbone_dir() / "tokenizer.json",
        model_card=card,
        eval_metrics=metrics,
    )
    return out_dir


def evaluate(
    model: nn.Module,
    encoder: Encoder,
    intents: dict[str, list[IntentExample]],
    pairs: dict[tuple[str, str], list[PairExample]],
    labels: tuple[str, ...],
) -> dict[str, Any]:
    """Intent metrics on valid/test; duplicate threshold on valid, metrics on each test split."""
    index = {name: i for i, name in enumerate(labels)}
    result: dict[str, Any] = {"intent": {}, "duplicate": {}}
    for split in ("valid", "test"):
        enc = _Encoded(encoder.encode_queries([e.text for e in intents[split]], bucketed=False))
        probs, _ = predict(model, enc, desc=f"eval intent {split}")
        y = np.array([index[e.label] for e in intents[split]])
        result["intent"][split] = intent_metrics(y, probs.argmax(-1), labels)
    scores: dict[tuple[str, str], np.ndarray] = {}
    for (dataset, split), items in pairs.items():
        if split == "train":
            continue
        enc = _Encoded(
            encoder.encode_pairs([p.left for p in items], [p.right for p in items], bucketed=False)
        )
        scores[(dataset, split)] = predict(model, enc, desc=f"eval {dataset} {split}")[1]
    valid_y = np.concatenate([[p.label for p in pairs[(d, "valid")]] for d in PAIR_DATASETS])
    valid_s = np.concatenate([scores[(d, "valid")] for d in PAIR_DATASETS])
    threshold = choose_threshold(valid_y, valid_s)
    result["duplicate"]["threshold"] = threshold
    result["duplicate"]["threshold_chosen_on"] = "valid (all three datasets pooled)"
    for split in ("valid", "test"):
        per = {}
        for d in PAIR_DATASETS:
            y = np.array([p.label for p in pairs[(d, split)]])
            per[d] = duplicate_metrics(y, scores[(d, split)], threshold)
        all_y = np.concatenate([[p.label for p in pairs[(d, split)]] for d in PAIR_DATASETS])
        all_s = np.concatenate([scores[(d, split)] for d in PAIR_DATASETS])
        per["all"] = duplicate_metrics(all_y, all_s, threshold)
        result["duplicate"][split] = per
    return result


def run(args: argparse.Namespace) -> int:
    """CLI entry: train, then print where the artifact is and its headline metrics."""
    out = train(args)
    metrics = json.loads((out / "eval.json").read_text())
    test = metrics["duplicate"]["test"]
    print(f"artifact: {out}")
    print(
        f"intent test: acc={metrics['intent']['test']['accuracy']:.4f} macro_f1={metrics['intent']['test']['macro_f1']:.4f}"
    )
    for d in (*PAIR_DATASETS, "all"):
        print(
            f"duplicate test {d}: f1={test[d]['f1']:.4f} p={test[d]['precision']:.4f} r={test[d]['recall']:.4f} auc={test[d]['roc_auc']:.4f}"
        )
    print(
        f"train {metrics['training']['train_seconds']}s, total {metrics['training']['total_seconds']}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.training.train`."""
    parser = argparse.ArgumentParser(prog="python -m streamer.training.train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
