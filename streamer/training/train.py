"""Fine-tune the multi-task model (intent + duplicate heads) on the shared data; write an artifact.

`python -m streamer.training.train` (what `make model` runs) writes artifacts/<name>-<version>/.
Designed for a shared 2-core CPU in under an hour: every layer is trained with a warm-up then
linear-decay schedule planned in steps; batches are length-grouped so padding costs little; each
epoch sees every positive pair and a disjoint share of the (plentiful) negatives; products are
serialized with the summarized description and derived model codes (`fields-v2`). Torch threads
adapt to the machine's load (see ThreadTuner). The time budget is a safety net: on a
slower or busier machine the schedule follows elapsed time instead and the run still ends on
time (eval.json records how many steps the clock decided, 0 = the deterministic step plan).
Weights are stored in fp16 and every metric is computed on the stored weights, reloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
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

from streamer.model.artifact import (
    EVAL,
    MODEL_CARD,
    WEIGHTS,
    ModelMeta,
    load_trained,
    save_trained,
    write_meta,
)
from streamer.model.buckets import DEFAULT_BUCKETS
from streamer.model.hardware import cpu_description
from streamer.model.network import BACKBONE_NAME, MultiTaskBert, backbone_dir, build_pretrained
from streamer.model.serialize import SERIALIZATION
from streamer.model.tasks import Task
from streamer.model.tokenize import EncodedBatch, Encoder
from streamer.training.data import (
    DEFAULT_DATA_DIR,
    PAIR_DATASETS,
    IntentExample,
    PairExample,
    load_intent_split,
    load_pair_split,
    media_span_examples,
)
from streamer.training.metrics import choose_threshold, duplicate_metrics, intent_metrics
from streamer.training.model_card import render_model_card

_PUNCT = re.compile(r"[^\w\s']")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options; the defaults are the recipe `make model` runs (see the model card)."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None, help="default artifacts/<name>-<version>")
    parser.add_argument("--name", default="minilm-multitask")
    parser.add_argument("--version", default="v4")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the positive pairs")
    parser.add_argument(
        "--negative-share",
        type=float,
        default=0.5,
        help="share of the negative pairs drawn per epoch (disjoint across epochs, then wrapping)",
    )
    parser.add_argument(
        "--swap-prob",
        type=float,
        default=0.0,
        help="augmentation: probability that a training pair is shown right-then-left",
    )
    parser.add_argument(
        "--serialization",
        choices=("fields-v2", "fields-v1"),
        default="fields-v2",
        help="product text for training (experiments only: serving always builds fields-v2, "
        "the summarized description plus derived model codes; fields-v1 is the full text)",
    )
    parser.add_argument("--intent-passes", type=float, default=2.0, help="passes over intents")
    parser.add_argument("--media-oversample", type=int, default=3)
    parser.add_argument(
        "--media-spans",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add QueryNER content spans (2+ words) as extra media training queries (off: in "
        "the pilots they raised media recall but cost more precision)",
    )
    parser.add_argument(
        "--other-cap",
        type=int,
        default=20,
        help="train examples taken per non-commerce CLINC150 intent for `other` (valid/test keep "
        "their own caps)",
    )
    parser.add_argument("--pair-batch", type=int, default=16)
    parser.add_argument("--intent-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-5, help="backbone learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument(
        "--schedule",
        choices=("linear", "cosine"),
        default="linear",
        help="learning-rate decay after the warm-up",
    )
    parser.add_argument("--warmup", type=float, default=0.06, help="warm-up share of the run")
    parser.add_argument(
        "--freeze-layers",
        type=int,
        default=0,
        help="lowest encoder layers kept frozen, embeddings with them (0 = train everything)",
    )
    parser.add_argument("--max-query-len", type=int, default=32)
    parser.add_argument("--max-pair-len", type=int, default=256)
    parser.add_argument(
        "--time-budget-min",
        type=float,
        default=45.0,
        help="training-phase budget: the LR schedule follows max(step, time) progress and "
        "training stops at the budget, so a busy shared CPU shortens the run, not the deadline",
    )
    parser.add_argument(
        "--tasks",
        choices=("both", "intent"),
        default="both",
        help="'intent' trains and evaluates the intent head only (quick intent experiments)",
    )
    parser.add_argument(
        "--save-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="dtype of the stored weights; metrics are computed on them after reloading (fp32)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads; 0 = adaptive: all cores, dropping to 1 while that is faster (on a "
        "shared machine two threads that wait on each other can run several times slower than "
        "one)",
    )
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
    """The shuffled list of (task, rows) batches for the whole run.

    Pair rows index `pair_labels`; with `args.swap_prob` > 0 the pair encoding holds the
    right-then-left copies after the originals, and a chosen row r is shown as r + N with that
    probability. `args.tasks == "intent"` plans intent batches only.
    """
    n_pairs = len(pair_labels)
    positives = [int(i) for i in np.flatnonzero(pair_labels == 1)]
    negatives = [int(i) for i in np.flatnonzero(pair_labels == 0)]
    rng.shuffle(negatives)
    per_epoch = math.ceil(len(negatives) * args.negative_share)
    intent_rows = list(range(len(intent_labels))) + media_rows * (args.media_oversample - 1)
    intent_per_epoch = math.ceil(len(intent_rows) * args.intent_passes / args.epochs)
    schedule: list[tuple[Task, list[int]]] = []
    for epoch in range(args.epochs):
        epoch_batches: list[tuple[Task, list[int]]] = []
        if args.tasks == "both":
            start = (epoch * per_epoch) % max(len(negatives), 1)
            neg = (negatives + negatives)[start : start + per_epoch]
            rows = positives + neg
            if args.swap_prob > 0:
                rows = [r + n_pairs if rng.random() < args.swap_prob else r for r in rows]
            pair_batches = _length_grouped(rows, pair_lengths, args.pair_batch, rng)
            epoch_batches += [(Task.DUPLICATE, b) for b in pair_batches]
        rng.shuffle(intent_rows)
        reps = math.ceil(intent_per_epoch / max(len(intent_rows), 1))
        chosen = (intent_rows * max(reps, 1))[:intent_per_epoch]
        intent_batches = _length_grouped(chosen, intent_lengths, args.intent_batch, rng)
        epoch_batches += [(Task.INTENT, b) for b in intent_batches]
        rng.shuffle(epoch_batches)
        schedule.extend(epoch_batches)
    return schedule


class ThreadTuner:
    """Picks the torch thread count (all cores or 1) that currently processes more tokens/s.

    On a shared machine two threads that wait on each other can run several times slower than
    one (measured here: 8.6 s against 1.3 s per pair batch while other jobs held the cores),
    while on an idle machine two are about 1.6x faster. Steps run in windows of `window` with
    the faster count; now and then a short window of `probe` steps re-measures the other count.
    The probe interval doubles (up to 64 windows) while the other count stays much slower, and
    resets when the two come close. `fixed` > 0 pins the count. Only speed depends on the count
    (and float rounding, through reduction order), not what is computed.
    """

    def __init__(self, most: int, *, fixed: int = 0, window: int = 40, probe: int = 4) -> None:
        self.choices = (fixed,) if fixed > 0 else tuple(sorted({1, max(1, most)}, reverse=True))
        self.window, self.probe = window, probe
        self.rate: dict[int, float] = {}
        self.steps: Counter[int] = Counter()
        self.current = self.choices[0]
        self._length = probe if len(self.choices) > 1 else window
        self._interval = 2
        self._since_probe = 0
        self._tokens = 0
        self._seconds = 0.0
        self._in_window = 0
        self._started = 0.0
        torch.set_num_threads(self.current)

    def begin(self) -> None:
        """Call before a step."""
        self._started = time.perf_counter()

    def end(self, tokens: int) -> None:
        """Call after a step that processed `tokens` (rows x padded width)."""
        self._seconds += time.perf_counter() - self._started
        self._tokens += tokens
        self._in_window += 1
        self.steps[self.current] += 1
        if self._in_window >= self._length:
            self.close_window(self._tokens / max(self._seconds, 1e-9))

    def close_window(self, rate: float) -> None:
        """Record the finished window's rate and pick the next window's count and length."""
        self.rate[self.current] = rate
        self._tokens, self._seconds, self._in_window = 0, 0.0, 0
        if len(self.choices) == 1:
            return
        unmeasured = [c for c in self.choices if c not in self.rate]
        best = max(self.rate, key=lambda c: self.rate[c])
        other = next(c for c in self.choices if c != best)
        if unmeasured:
            self.current, self._length = unmeasured[0], self.probe
        elif self._length == self.probe:  # a probe just ended: adapt how often to probe
            close = self.rate[other] >= 0.7 * self.rate[best]
            self._interval = 2 if close else min(self._interval * 2, 64)
            self._since_probe = 0
            self.current, self._length = best, self.window
        elif self._since_probe + 1 >= self._interval:
            self.current, self._length = other, self.probe
        else:
            self._since_probe += 1
            self.current, self._length = best, self.window
        torch.set_num_threads(self.current)

    def summary(self) -> dict[str, Any]:
        """Steps run per thread count and the last rate estimates (tokens/s)."""
        return {
            "steps_by_threads": {str(k): v for k, v in sorted(self.steps.items())},
            "tokens_per_s": {str(k): round(v) for k, v in sorted(self.rate.items())},
        }


def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier at `progress` in [0, 1]: linear warm-up, then linear or cosine decay."""
    if progress < warmup:
        return progress / warmup
    rest = min(1.0, (progress - warmup) / max(1.0 - warmup, 1e-9))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    return 1.0 - rest


@torch.inference_mode()
def predict(
    model: nn.Module,
    enc: _Encoded,
    batch: int = 64,
    desc: str = "",
    tuner: ThreadTuner | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Intent probabilities (N, K) and duplicate probabilities (N,), length-sorted batches."""
    model.eval()
    order = np.argsort(enc.lengths, kind="stable")
    intent_out: np.ndarray | None = None
    dup_out = np.zeros(len(order), np.float32)
    for start in tqdm(range(0, len(order), batch), desc=desc, leave=False, disable=not desc):
        rows = [int(r) for r in order[start : start + batch]]
        inputs = enc.take(rows)
        if tuner is not None:
            tuner.begin()
        intent, dup = model(*inputs)
        if tuner is not None:
            tuner.end(inputs[0].numel())
        if intent_out is None:
            intent_out = np.zeros((len(order), intent.shape[-1]), np.float32)
        intent_out[rows] = torch.softmax(intent, -1).numpy()
        dup_out[rows] = torch.sigmoid(dup.squeeze(-1)).numpy()
    assert intent_out is not None
    return intent_out, dup_out


def freeze_lower(model: MultiTaskBert, layers: int) -> None:
    """Freeze embeddings and the lowest `layers` encoder layers; 0 leaves everything trainable."""
    if layers <= 0:
        return
    bert = model.bert
    for p in bert.embeddings.parameters():
        p.requires_grad = False
    for layer in bert.encoder.layer[:layers]:
        for p in layer.parameters():
            p.requires_grad = False


def training_machine() -> dict[str, Any]:
    """The CPU's model and int8/bf16 flags (`streamer.model.hardware`, as compile records them)
    and its core count, for the model card."""
    return {**cpu_description(), "cores": os.cpu_count()}


def process_seconds() -> float | None:
    """Wall seconds since this process started (imports included); None off Linux."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def train(args: argparse.Namespace) -> Path:
    """Run the whole training + evaluation and write the artifact; returns its directory."""
    started = time.monotonic()
    tuner = ThreadTuner(os.cpu_count() or 1, fixed=args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out_dir = args.out or Path("artifacts") / f"{args.name}-{args.version}"
    with_pairs = args.tasks == "both"
    fields_v2 = args.serialization == "fields-v2"

    intents = {
        s: _limit(
            load_intent_split(s, args.data_dir, other_cap=args.other_cap if s == "train" else None),
            args.limit,
            rng,
        )
        for s in ("train", "valid", "test")
    }
    labels = tuple(sorted({e.label for e in intents["train"]}))
    label_index = {name: i for i, name in enumerate(labels)}
    extra_media = media_span_examples(args.data_dir) if args.media_spans else []
    intent_train = intents["train"] + _limit(extra_media, args.limit, rng)
    pairs = {
        (d, s): _limit(
            load_pair_split(d, s, args.data_dir, summarize=fields_v2, derive_model=fields_v2),
            args.limit,
            rng,
        )
        for d in (PAIR_DATASETS if with_pairs else ())
        for s in ("train", "valid", "test")
    }
    encoder = Encoder.from_files(
        backbone_dir() / "tokenizer.json", DEFAULT_BUCKETS, args.max_query_len, args.max_pair_len
    )

    train_texts = [_strip_punct(e.text) if rng.random() < 0.5 else e.text for e in intent_train]
    intent_enc = _Encoded(encoder.encode_queries(train_texts, bucketed=False))
    intent_y = torch.tensor([label_index[e.label] for e in intent_train])
    train_pairs = [p for d in PAIR_DATASETS for p in pairs.get((d, "train"), [])]
    lefts, rights = [p.left for p in train_pairs], [p.right for p in train_pairs]
    if args.swap_prob > 0:
        lefts, rights = lefts + rights, rights + lefts
    pair_enc = _Encoded(encoder.encode_pairs(lefts, rights, bucketed=False)) if lefts else None
    pair_y = np.array([p.label for p in train_pairs], np.float32)
    pair_y_all = np.concatenate([pair_y, pair_y]) if args.swap_prob > 0 else pair_y
    media_rows = [i for i, e in enumerate(intent_train) if e.label == "media"]
    schedule = build_schedule(
        intent_y.tolist(),
        pair_y,
        intent_enc.lengths,
        pair_enc.lengths if pair_enc is not None else np.zeros(0, np.int32),
        media_rows,
        args,
        rng,
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
    ce, bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()
    model.train()
    bar = tqdm(schedule, desc="train", unit="batch", mininterval=5.0, file=sys.stderr)
    smoothed: dict[Task, float] = {}
    done = clock_steps = 0
    loads: list[float] = [_load_avg()]
    next_load_sample = train_started + 60.0
    for task, rows in bar:
        now = time.monotonic()
        by_steps, by_time = done / total, (now - train_started) / budget
        if by_time > (done + 1) / total:  # the clock is a whole step ahead of the plan
            clock_steps += 1
        progress = max(by_steps, by_time)
        if progress >= 1.0:
            break
        if now >= next_load_sample:
            loads.append(_load_avg())
            next_load_sample = now + 60.0
        factor = lr_factor(progress, args.warmup, args.schedule)
        optimizer.param_groups[0]["lr"] = args.lr * factor
        optimizer.param_groups[1]["lr"] = args.head_lr * factor
        tuner.begin()
        if task == Task.INTENT:
            inputs = intent_enc.take(rows)
            intent_logits, _ = model(*inputs)
            loss = ce(intent_logits, intent_y[rows])
        else:
            assert pair_enc is not None
            inputs = pair_enc.take(rows)
            _, dup_logit = model(*inputs)
            loss = bce(dup_logit.squeeze(-1), torch.from_numpy(pair_y_all[rows]))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tuner.end(inputs[0].numel())
        done += 1
        value = loss.detach().item()
        smoothed[task] = 0.98 * smoothed.get(task, value) + 0.02 * value
        bar.set_postfix(
            intent=f"{smoothed.get(Task.INTENT, 0):.3f}",
            dup=f"{smoothed.get(Task.DUPLICATE, 0):.3f}",
        )
    bar.close()
    loads.append(_load_avg())
    train_seconds = time.monotonic() - started
    train_phase_seconds = time.monotonic() - train_started

    meta = ModelMeta(
        name=args.name,
        version=args.version,
        labels=labels,
        duplicate_threshold=0.5,
        max_query_len=encoder.max_query_len,
        max_pair_len=encoder.max_pair_len,
        serialization=SERIALIZATION if fields_v2 else "fields-v1",
        buckets=dict(DEFAULT_BUCKETS),
        backbone=model.config.to_diff_dict() | {"model_type": "bert"},
    )
    # Store the weights first, then evaluate what was stored (reloaded and widened to fp32).
    save_trained(
        model,
        out_dir,
        meta,
        backbone_dir() / "tokenizer.json",
        dtype=getattr(torch, args.save_dtype),
    )
    del model
    stored, _ = load_trained(out_dir)
    eval_tuner = ThreadTuner(os.cpu_count() or 1, fixed=args.threads, window=10, probe=2)
    metrics = evaluate(stored, encoder, intents, pairs, labels, eval_tuner)
    if with_pairs:
        meta = dataclasses.replace(meta, duplicate_threshold=metrics["duplicate"]["threshold"])
    previous_seconds = 0.0
    if args.init_from is not None and (args.init_from / "eval.json").exists():
        prev = json.loads((args.init_from / "eval.json").read_text()).get("training", {})
        previous_seconds = float(prev.get("cumulative_train_seconds", prev.get("train_seconds", 0)))
    finite_loads = [x for x in loads if x == x]
    metrics["training"] = {
        "train_seconds": round(train_seconds, 1),
        "train_phase_seconds": round(train_phase_seconds, 1),
        "cumulative_train_seconds": round(previous_seconds + train_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "batches_planned": total,
        "batches_done": done,
        "clock_decided_steps": clock_steps,
        "threads": args.threads or "adaptive",
        "thread_use": {"train": tuner.summary(), "eval": eval_tuner.summary()},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": training_machine(),
        "load_avg_1min": {
            "min": round(min(finite_loads), 2) if finite_loads else None,
            "mean": round(sum(finite_loads) / len(finite_loads), 2) if finite_loads else None,
            "max": round(max(finite_loads), 2) if finite_loads else None,
            "samples": len(finite_loads),
        },
        "torch": torch.__version__,
        "weights_dtype": args.save_dtype,
        "weights_bytes": (out_dir / WEIGHTS).stat().st_size,
        "command": "python -m streamer.training.train " + " ".join(sys.argv[1:]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "train_sizes": {
            "intent": dict(Counter(e.label for e in intent_train)),
            "intent_extra_media_spans": len(extra_media),
            "pairs": {d: len(pairs[(d, "train")]) for d in PAIR_DATASETS if with_pairs},
        },
    }
    seconds = process_seconds()
    metrics["training"]["process_seconds"] = round(seconds, 1) if seconds is not None else None
    write_meta(out_dir, meta)
    (out_dir / EVAL).write_text(json.dumps(metrics, indent=2) + "\n")
    if with_pairs:
        (out_dir / MODEL_CARD).write_text(render_model_card(meta, metrics, BACKBONE_NAME))
    return out_dir


def evaluate(
    model: nn.Module,
    encoder: Encoder,
    intents: dict[str, list[IntentExample]],
    pairs: dict[tuple[str, str], list[PairExample]],
    labels: tuple[str, ...],
    tuner: ThreadTuner | None = None,
) -> dict[str, Any]:
    """Intent metrics on valid/test; duplicate threshold on valid, metrics on each test split."""
    index = {name: i for i, name in enumerate(labels)}
    result: dict[str, Any] = {"intent": {}}
    for split in ("valid", "test"):
        enc = _Encoded(encoder.encode_queries([e.text for e in intents[split]], bucketed=False))
        probs, _ = predict(model, enc, desc=f"eval intent {split}", tuner=tuner)
        y = np.array([index[e.label] for e in intents[split]])
        result["intent"][split] = intent_metrics(y, probs.argmax(-1), labels)
    if not pairs:
        return result
    result["duplicate"] = {}
    scores: dict[tuple[str, str], np.ndarray] = {}
    for (dataset, split), items in pairs.items():
        if split == "train":
            continue
        enc = _Encoded(
            encoder.encode_pairs([p.left for p in items], [p.right for p in items], bucketed=False)
        )
        scores[(dataset, split)] = predict(model, enc, desc=f"eval {dataset} {split}", tuner=tuner)[
            1
        ]
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


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Headline figures of an eval.json, valid (for decisions) and test (reported)."""
    lines = []
    for split in ("valid", "test"):
        it = metrics["intent"][split]
        per = " ".join(f"{k}={v['f1']:.4f}" for k, v in it["per_label"].items())
        lines.append(
            f"intent {split}: acc={it['accuracy']:.4f} macro_f1={it['macro_f1']:.4f} f1: {per}"
        )
        if "duplicate" in metrics:
            dup = metrics["duplicate"][split]
            lines += [
                f"duplicate {split} {d}: f1={dup[d]['f1']:.4f} p={dup[d]['precision']:.4f} "
                f"r={dup[d]['recall']:.4f} auc={dup[d]['roc_auc']:.4f}"
                for d in (*PAIR_DATASETS, "all")
            ]
    training = metrics["training"]
    lines.append(
        f"train {training['train_seconds']}s ({training['batches_done']}/"
        f"{training['batches_planned']} batches, {training['clock_decided_steps']} decided by the "
        f"clock), total {training['total_seconds']}s, load {training['load_avg_1min']}"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    """CLI entry: train, then print where the artifact is and its headline metrics."""
    out = train(args)
    metrics = json.loads((out / EVAL).read_text())
    print(f"artifact: {out}")
    for line in summary_lines(metrics):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.training.train`."""
    parser = argparse.ArgumentParser(prog="python -m streamer.training.train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
