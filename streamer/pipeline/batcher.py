"""Micro-batcher: closes batches by size, padded-token budget or linger; picks the bucket (pure).

Compiled models (Neuron, CUDA graphs, fixed-shape ONNX) run a small set of static shapes:
a batch of ``rows`` rows whose longest row has ``n`` tokens runs as
``choose_batch(rows) x choose_seq_len(n)`` (`streamer.model.buckets`). That padded area is what the device pays, so the
token budget is counted exactly that way (as TEI's ``queue.rs`` counts ``max_len x n``,
here with the batch padding included): one long row in a batch of short ones makes every
row pay its length, and 17 rows pay for the 32-row bucket.

A batch closes when

- ``size``: it holds ``max_batch`` rows;
- ``tokens``: the next row would push its padded area over ``max_padded_tokens`` (the open
  batch closes first and the row starts a new one), or no further row could fit at all;
  a single row whose padded area alone exceeds the budget goes alone;
- ``linger``: ``poll(now)`` at or after ``deadline()``; the deadline is fixed when the
  batch opens, from the linger callable (the adaptive controller) clamped to
  ``[0, max_linger_s]``;
- ``idle``: the caller saw a device with nothing to run (``flush(now, "idle")``): waiting
  for more rows would only leave it idle, while rows that arrive during the run form the
  next batch, so batches grow with the load by themselves (work-conserving dispatch);
- ``flush``: the caller drains (shutdown, rebalance).

``add()`` never closes a batch for linger: a burst of records handed over at one instant
batches fully, and the caller polls after adding. Items come out exactly once, in order.

``group_by_length`` (the throughput-first pair path) keeps one open batch per sequence
bucket, so a long row no longer drags the short rows around it into its padding: on the
benchmark's real pair mix (12% of pairs over 128 tokens), arrival-order batches were
28 of 49 at 4 x 256, and the model ran the mix at half the speed of length-grouped batches
(BENCHMARKS.md). Rows of different lengths then complete out of order, which the offset
watermark already allows; within a bucket the order is kept. ``poll`` and ``flush``
return one batch per call: call them until they return None.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from streamer.model.buckets import choose_batch, choose_seq_len

__all__ = [
    "Batch",
    "BatchPolicy",
    "MicroBatcher",
    "duplicate_policy",
    "intent_policy",
]

T = TypeVar("T")


def _check_buckets(name: str, buckets: tuple[int, ...]) -> None:
    if not buckets:
        raise ValueError(f"{name} must not be empty")
    if any(b < 1 for b in buckets):
        raise ValueError(f"{name} must be positive, got {buckets}")
    if any(a >= b for a, b in itertools.pairwise(buckets)):
        raise ValueError(f"{name} must be strictly ascending, got {buckets}")


@dataclass(frozen=True)
class BatchPolicy:
    """Limits of one task's batches and the shapes its compiled model accepts."""

    max_batch: int  # rows
    max_padded_tokens: int  # choose_seq_len(longest row) x choose_batch(rows)
    max_linger_s: float  # upper bound of waiting for more rows
    seq_buckets: tuple[int, ...]  # compiled sequence lengths, ascending
    batch_buckets: tuple[int, ...]  # compiled batch sizes, ascending
    group_by_length: bool = False  # one open batch per sequence bucket

    def __post_init__(self) -> None:
        _check_buckets("seq_buckets", self.seq_buckets)
        _check_buckets("batch_buckets", self.batch_buckets)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_batch > self.batch_buckets[-1]:
            raise ValueError(
                f"max_batch {self.max_batch} exceeds the largest batch bucket "
                f"{self.batch_buckets[-1]}: such a batch could not run"
            )
        if self.max_padded_tokens < 1:
            raise ValueError(f"max_padded_tokens must be >= 1, got {self.max_padded_tokens}")
        if not (math.isfinite(self.max_linger_s) and self.max_linger_s >= 0):
            raise ValueError(f"max_linger_s must be finite and >= 0, got {self.max_linger_s}")

    def padded_tokens(self, rows: int, longest: int) -> int:
        """Area a batch of rows rows with longest row longest pays on a static-shape device."""
        return choose_seq_len(self.seq_buckets, longest) * choose_batch(self.batch_buckets, rows)


def intent_policy(
    *,
    max_batch: int = 32,
    max_padded_tokens: int = 32 * 16,
    max_linger_s: float = 0.002,
    seq_buckets: tuple[int, ...] = (16, 32, 64),
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
) -> BatchPolicy:
    """Latency-first defaults for query intents (P99 <= 10 ms end to end).

    Why these numbers (DESIGN.md section 4):

    - Queries are short: 16 tokens holds nearly all of them; 32/64 catch the rest and are
      truncation-bounded at 64 by the tokenizer.
    - ``max_batch=32``: on a GPU 32x16 costs 0.39 ms against 0.29 ms for 1x16, so 32 rows
      cost about one call; bigger batches add latency for little gain at 16k TPS.
    - ``max_padded_tokens=512`` (= 32x16): a full batch of normal queries fits, but one
      64-token query caps its batch at 8 rows instead of making 32 rows pay length 64.
    - ``max_linger_s=2 ms`` = max_batch / peak TPS (32 / 16,000): at the published peak the
      batch fills by size just as linger runs out; below peak the adaptive controller
      (``LingerController``) shrinks the wait to what the 10 ms budget leaves.

    On the 2-core CPU (ONNX int8) 32x16 takes 31 ms, three times the whole budget, while
    1x16 takes 2.3 ms; interpolating, 4x16 costs about 5 ms. There pass
    ``max_batch=4, max_padded_tokens=64``.
    """
    return BatchPolicy(
        max_batch=max_batch,
        max_padded_tokens=max_padded_tokens,
        max_linger_s=max_linger_s,
        seq_buckets=seq_buckets,
        batch_buckets=batch_buckets,
    )


def duplicate_policy(
    *,
    max_batch: int = 128,
    max_padded_tokens: int = 128 * 128,
    max_linger_s: float = 0.050,
    seq_buckets: tuple[int, ...] = (64, 128, 256),
    batch_buckets: tuple[int, ...] = (8, 16, 32, 64, 128),
    group_by_length: bool = True,
) -> BatchPolicy:
    """Throughput-first defaults for product-duplicate pairs (8,800 TPS, no per-event P99).

    Why these numbers (DESIGN.md section 4):

    - Pairs (title + description) run about 128 tokens; 256 is all-MiniLM-L6-v2's
      ``max_seq_length``; 64 serves short pairs at half the cost.
    - ``max_batch=128``: on a GPU L=128 runs 46k items/s at batch 32 and 68k at 128 (CUDA
      graphs), 87k at 2048 (eager); 128 gets most of the gain with a 1.9 ms batch.
    - ``max_padded_tokens=16384`` (= 128x128): full batches of typical pairs; a batch of
      256-token pairs stops at 64 rows, keeping the per-batch time (and the out-of-order
      window the offset watermark must hold) bounded.
    - ``max_linger_s=50 ms``: at 8,800 TPS 128 rows arrive in 15 ms, so under load batches
      close by size; linger only bounds the tail of a trickle or the end of a backfill.
    - ``batch_buckets`` start at 8: fewer compiled graphs, and a lone pair padding to 8
      costs little on a path that is judged by throughput.
    - ``group_by_length``: pairs batch with pairs of their own sequence bucket (see the
      module docstring); order across buckets does not matter on this path.

    On the 2-core CPU (ONNX int8) 8x128 takes 91 ms (88 items/s) and larger batches do not
    raise throughput; there ``max_batch=8, max_padded_tokens=1024`` keeps batches short.
    """
    return BatchPolicy(
        max_batch=max_batch,
        max_padded_tokens=max_padded_tokens,
        max_linger_s=max_linger_s,
        seq_buckets=seq_buckets,
        batch_buckets=batch_buckets,
        group_by_length=group_by_length,
    )


@dataclass
class Batch(Generic[T]):
    """A closed batch: its items in arrival order and the compiled shape it runs as."""

    items: list[T]
    lengths: list[int]  # tokens per row, as given to add()
    seq_len: int  # compiled sequence bucket of the longest row
    padded_rows: int  # compiled batch bucket (>= len(items))
    opened_at: float
    closed_at: float
    reason: str  # "size" | "tokens" | "linger" | "idle" | "flush"

    @property
    def rows(self) -> int:
        """Real rows in the batch (the rest of padded_rows is padding)."""
        return len(self.items)

    @property
    def padded_tokens(self) -> int:
        """Area the device pays for this batch."""
        return self.seq_len * self.padded_rows

    @property
    def waited_s(self) -> float:
        """How long the first row waited in the batcher."""
        return self.closed_at - self.opened_at


@dataclass
class _OpenBatch(Generic[T]):
    opened_at: float
    deadline: float
    items: list[T] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    longest: int = 0


class MicroBatcher(Generic[T]):
    """Groups rows into batches for one task; the caller drives it with add/poll/flush."""

    def __init__(self, policy: BatchPolicy, linger: Callable[[], float] | None = None) -> None:
        self.policy = policy
        self._linger = linger
        # Open batches by key: the sequence bucket when grouping by length, else one (key 0).
        self._open: dict[int, _OpenBatch[T]] = {}

    def _current_linger(self) -> float:
        max_linger = self.policy.max_linger_s
        if self._linger is None:
            return max_linger
        value = float(self._linger())
        if math.isnan(value):
            return max_linger
        return min(max(value, 0.0), max_linger)

    def _close(self, key: int, reason: str, now: float) -> Batch[T]:
        open_ = self._open.pop(key)
        return Batch(
            items=open_.items,
            lengths=open_.lengths,
            seq_len=choose_seq_len(self.policy.seq_buckets, open_.longest),
            padded_rows=choose_batch(self.policy.batch_buckets, len(open_.items)),
            opened_at=open_.opened_at,
            closed_at=now,
            reason=reason,
        )

    def add(self, item: T, n_tokens: int, now: float) -> list[Batch[T]]:
        """Add a row; returns the 0..2 batches this closes (the open one, then possibly this)."""
        policy = self.policy
        bucket = choose_seq_len(policy.seq_buckets, n_tokens)  # validate before touching state
        key = bucket if policy.group_by_length else 0
        closed: list[Batch[T]] = []
        open_ = self._open.get(key)
        if open_ is not None:
            longest = max(open_.longest, n_tokens)
            if policy.padded_tokens(len(open_.items) + 1, longest) > policy.max_padded_tokens:
                closed.append(self._close(key, "tokens", now))
                open_ = None
        if open_ is None:
            open_ = _OpenBatch(opened_at=now, deadline=now + self._current_linger())
            self._open[key] = open_
        open_.items.append(item)
        open_.lengths.append(n_tokens)
        open_.longest = max(open_.longest, n_tokens)
        rows = len(open_.items)
        if rows >= policy.max_batch:
            closed.append(self._close(key, "size", now))
        elif policy.padded_tokens(rows + 1, open_.longest) > policy.max_padded_tokens:
            # No further row can fit (a longer row only costs more): waiting is pointless.
            # This also sends a row that alone exceeds the budget on its own.
            closed.append(self._close(key, "tokens", now))
        return closed

    def _earliest_due(self) -> int | None:
        """Key of the open batch whose linger deadline comes first; None if none is open."""
        if not self._open:
            return None
        return min(self._open, key=lambda k: self._open[k].deadline)

    def poll(self, now: float) -> Batch[T] | None:
        """Close the batch whose linger deadline passed first, if any (call until None)."""
        key = self._earliest_due()
        if key is not None and now >= self._open[key].deadline:
            return self._close(key, "linger", now)
        return None

    def deadline(self) -> float | None:
        """When poll() will next close a batch (opened_at + linger); None if empty."""
        key = self._earliest_due()
        return None if key is None else self._open[key].deadline

    def flush(self, now: float, reason: str = "flush") -> Batch[T] | None:
        """Close an open batch (the one due first) regardless of its deadline; call until None.

        For shutdown, rebalance, a paused partition or an idle device.
        """
        key = self._earliest_due()
        return None if key is None else self._close(key, reason, now)

    def __len__(self) -> int:
        """Rows waiting in open batches."""
        return sum(len(o.items) for o in self._open.values())
