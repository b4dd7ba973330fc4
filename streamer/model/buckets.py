"""Shape-bucket choice: pure functions shared by the batcher, the encoder and the compilers.

Compiled targets (CUDA graphs, Neuron) only run the exact shapes they were built for, and padded
tokens are what every backend pays for, so a batch is padded to the smallest bucket that fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamer.model.tasks import Task
from streamer.model.vocab import CLS_ID, SEP_ID


@dataclass(frozen=True)
class Buckets:
    """Allowed batch sizes and sequence lengths for one task, both sorted ascending."""

    batch_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.batch_sizes or not self.seq_lens:
            raise ValueError("buckets need at least one batch size and one sequence length")
        if any(b <= 0 for b in self.batch_sizes) or any(s <= 0 for s in self.seq_lens):
            raise ValueError("bucket sizes must be positive")
        object.__setattr__(self, "batch_sizes", tuple(sorted(set(self.batch_sizes))))
        object.__setattr__(self, "seq_lens", tuple(sorted(set(self.seq_lens))))

    @property
    def max_batch(self) -> int:
        """The largest batch a single call may carry; larger batches are split by the caller."""
        return self.batch_sizes[-1]

    @property
    def max_seq_len(self) -> int:
        """The longest sequence; longer inputs are truncated to it."""
        return self.seq_lens[-1]

    def shapes(self) -> list[tuple[int, int]]:
        """Every (batch, seq_len) shape, the set a static-shape compiler must build."""
        return [(b, s) for b in self.batch_sizes for s in self.seq_lens]

    def to_json(self) -> dict[str, list[int]]:
        """Plain-JSON form for config and manifest files."""
        return {"batch_sizes": list(self.batch_sizes), "seq_lens": list(self.seq_lens)}

    @classmethod
    def from_json(cls, data: dict[str, list[int]]) -> Buckets:
        """Inverse of `to_json`."""
        return cls(tuple(data["batch_sizes"]), tuple(data["seq_lens"]))


def _smallest_fitting(sizes: Sequence[int], n: int, what: str, minimum: int) -> int:
    """The one bucket rule: the smallest size >= n (batcher, encoder and compilers alike)."""
    if n < minimum:
        raise ValueError(
            f"{what} must be {'positive' if minimum == 1 else 'non-negative'}, got {n}"
        )
    fitting = [size for size in sizes if size >= n]
    if not fitting:
        raise ValueError(f"{what} {n} exceeds the largest compiled bucket {max(sizes)}")
    return min(fitting)


def choose_seq_len(buckets: Buckets | Sequence[int], n_tokens: int) -> int:
    """Smallest bucket sequence length >= n_tokens (0 fits the smallest; the caller truncates
    to the largest first)."""
    sizes = buckets.seq_lens if isinstance(buckets, Buckets) else buckets
    return _smallest_fitting(sizes, n_tokens, "sequence length", minimum=0)


def choose_batch(buckets: Buckets | Sequence[int], rows: int) -> int:
    """Smallest bucket batch size >= rows (the caller splits rows above the largest bucket)."""
    sizes = buckets.batch_sizes if isinstance(buckets, Buckets) else buckets
    return _smallest_fitting(sizes, rows, "batch size", minimum=1)


def all_shapes(buckets: Mapping[Task, Buckets]) -> list[tuple[int, int]]:
    """Every (batch, seq_len) a static-shape target builds: both tasks' grids, smallest first."""
    shapes = {shape for b in buckets.values() for shape in b.shapes()}
    return sorted(shapes, key=lambda s: (s[0] * s[1], s))


def choose_shape(shapes: Iterable[tuple[int, int]], batch: int, seq_len: int) -> tuple[int, int]:
    """The compiled shape with the fewest padded tokens that holds (batch, seq_len)."""
    fitting = [(b, s) for b, s in shapes if b >= batch and s >= seq_len]
    if not fitting:
        raise ValueError(f"no compiled shape holds batch {batch} x seq_len {seq_len}")
    return min(fitting, key=lambda s: (s[0] * s[1], s))


def pad_to_shape(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray,
    batch: int,
    seq_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad int32 inputs to (batch, seq_len): zero columns; filler rows are `[CLS] [SEP]`."""
    b, s = input_ids.shape
    if b > batch or s > seq_len:
        raise ValueError(f"({b}, {s}) does not fit ({batch}, {seq_len})")
    out = []
    for arr in (input_ids, attention_mask, token_type_ids):
        padded = np.zeros((batch, seq_len), np.int32)
        padded[:b, :s] = arr
        out.append(padded)
    ids, mask, types = out
    ids[b:, 0], ids[b:, 1] = CLS_ID, SEP_ID
    mask[b:, :2] = 1
    return ids, mask, types


# Defaults chosen from the training data's token-length distribution (see the model card):
# queries: p99 is under 16 tokens, 32 covers the long tail of help sentences;
# pairs: Walmart-Amazon/Amazon-Google pairs mostly fit 64-128, Abt-Buy descriptions need 256.
DEFAULT_BUCKETS: dict[Task, Buckets] = {
    Task.INTENT: Buckets(batch_sizes=(1, 8, 32, 128), seq_lens=(16, 32)),
    Task.DUPLICATE: Buckets(batch_sizes=(1, 8, 32), seq_lens=(64, 128, 256)),
}
