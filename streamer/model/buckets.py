"""Shape-bucket choice: pure functions shared by the batcher, the encoder and the compilers.

Compiled targets (CUDA graphs, Neuron) only run the exact shapes they were built for, and padded
tokens are what every backend pays for, so a batch is padded to the smallest bucket that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamer.model.tasks import Task


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


def _smallest_fitting(sizes: Sequence[int], n: int, what: str) -> int:
    if n <= 0:
        raise ValueError(f"{what} must be positive, got {n}")
    for size in sorted(sizes):
        if size >= n:
            return size
    raise ValueError(f"{what} {n} exceeds the largest bucket {max(sizes)}")


def choose_seq_len(buckets: Buckets | Sequence[int], max_len: int) -> int:
    """Smallest bucket sequence length >= max_len (the caller truncates to the largest first)."""
    sizes = buckets.seq_lens if isinstance(buckets, Buckets) else buckets
    return _smallest_fitting(sizes, max_len, "sequence length")


def choose_batch(buckets: Buckets | Sequence[int], n: int) -> int:
    """Smallest bucket batch size >= n (the caller splits n above the largest bucket)."""
    sizes = buckets.batch_sizes if isinstance(buckets, Buckets) else buckets
    return _smallest_fitting(sizes, n, "batch size")


# Defaults chosen from the training data's token-length distribution (see the model card):
# queries: p99 is under 16 tokens, 32 covers the long tail of help sentences;
# pairs: Walmart-Amazon/Amazon-Google pairs mostly fit 64-128, Abt-Buy descriptions need 256.
DEFAULT_BUCKETS: dict[Task, Buckets] = {
    Task.INTENT: Buckets(batch_sizes=(1, 8, 32, 128), seq_lens=(16, 32)),
    Task.DUPLICATE: Buckets(batch_sizes=(1, 8, 32), seq_lens=(64, 128, 256)),
}
