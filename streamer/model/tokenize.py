"""Text -> int32 token-id arrays padded to a compiled shape bucket (the serving hot path).

Uses the `tokenizers` fast tokenizer from the artifact's tokenizer.json directly (no
transformers import on the hot path). Queries are single sequences; product pairs are one
sequence pair `[CLS] left [SEP] right [SEP]` with token type 0/1, truncated longest-first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from streamer.model.artifact import TOKENIZER, read_meta
from streamer.model.buckets import Buckets, choose_seq_len, pad_to_shape
from streamer.model.serialize import serialize_product
from streamer.model.tasks import Task


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs for one batch: int32 (B, L) arrays plus real lengths and truncation flags."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray

    @property
    def batch_size(self) -> int:
        """Number of rows (real plus padding rows)."""
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """Padded sequence length (a bucket length unless encoded with bucketed=False)."""
        return int(self.input_ids.shape[1])

    def pad_rows(self, batch_size: int) -> EncodedBatch:
        """Append filler rows up to a batch bucket (`buckets.pad_to_shape`'s filler rule)."""
        extra = batch_size - self.batch_size
        if extra < 0:
            raise ValueError(f"batch of {self.batch_size} does not fit {batch_size}")
        if extra == 0:
            return self
        ids, mask, types = pad_to_shape(
            self.input_ids, self.attention_mask, self.token_type_ids, batch_size, self.seq_len
        )
        return EncodedBatch(
            ids,
            mask,
            types,
            np.concatenate([self.lengths, mask[self.batch_size :].sum(axis=1, dtype=np.int32)]),
            np.concatenate([self.truncated, np.zeros(extra, bool)]),
        )


def _stack(encodings: Sequence[Encoding], seq_len: int) -> EncodedBatch:
    n = len(encodings)
    ids = np.zeros((n, seq_len), np.int32)
    types = np.zeros((n, seq_len), np.int32)
    mask = np.zeros((n, seq_len), np.int32)
    lengths = np.zeros(n, np.int32)
    truncated = np.zeros(n, bool)
    for i, enc in enumerate(encodings):
        k = len(enc.ids)
        ids[i, :k] = enc.ids
        types[i, :k] = enc.type_ids
        mask[i, :k] = 1
        lengths[i] = k
        truncated[i] = bool(enc.overflowing)
    return EncodedBatch(ids, mask, types, lengths, truncated)


class Encoder:
    """Tokenizes queries and product pairs exactly as the model was trained."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        buckets: Mapping[Task, Buckets],
        max_query_len: int,
        max_pair_len: int,
    ) -> None:
        self.buckets = dict(buckets)
        self.max_query_len = min(max_query_len, self.buckets[Task.INTENT].max_seq_len)
        self.max_pair_len = min(max_pair_len, self.buckets[Task.DUPLICATE].max_seq_len)
        # Two configured copies: truncation is tokenizer state, set once here, not per call.
        self._query_tok = Tokenizer.from_str(tokenizer.to_str())
        self._pair_tok = Tokenizer.from_str(tokenizer.to_str())
        for tok, max_len in (
            (self._query_tok, self.max_query_len),
            (self._pair_tok, self.max_pair_len),
        ):
            tok.no_padding()
            tok.enable_truncation(max_len, strategy="longest_first")

    @classmethod
    def from_files(
        cls,
        tokenizer_json: Path,
        buckets: Mapping[Task, Buckets],
        max_query_len: int,
        max_pair_len: int,
    ) -> Encoder:
        """Build from a tokenizer.json file (an artifact's or the backbone's)."""
        return cls(Tokenizer.from_file(str(tokenizer_json)), buckets, max_query_len, max_pair_len)

    @classmethod
    def from_artifact(cls, artifact_dir: Path) -> Encoder:
        """Build from a trained or compiled artifact (its tokenizer.json and config.json)."""
        meta = read_meta(artifact_dir)
        return cls.from_files(
            Path(artifact_dir) / TOKENIZER,
            meta.buckets,
            meta.max_query_len,
            meta.max_pair_len,
        )

    def _finish(self, encodings: list[Encoding], task: Task, bucketed: bool) -> EncodedBatch:
        if not encodings:
            raise ValueError("cannot encode an empty batch")
        longest = max(len(e.ids) for e in encodings)
        seq_len = choose_seq_len(self.buckets[task], longest) if bucketed else longest
        return _stack(encodings, seq_len)

    def encode_queries(self, texts: Sequence[str], *, bucketed: bool = True) -> EncodedBatch:
        """Encode search queries, padded to the smallest intent bucket that fits the longest."""
        return self._finish(self._query_tok.encode_batch(list(texts)), Task.INTENT, bucketed)

    def encode_pairs(
        self, lefts: Sequence[str], rights: Sequence[str], *, bucketed: bool = True
    ) -> EncodedBatch:
        """Encode serialized product pairs as `[CLS] left [SEP] right [SEP]` with type ids 0/1."""
        if len(lefts) != len(rights):
            raise ValueError("lefts and rights differ in length")
        pairs = list(zip(lefts, rights, strict=True))
        return self._finish(self._pair_tok.encode_batch(pairs), Task.DUPLICATE, bucketed)

    def encode_products(
        self, lefts: Sequence[Mapping[str, object]], rights: Sequence[Mapping[str, object]]
    ) -> EncodedBatch:
        """Serialize product records with `serialize_product` and encode them as pairs."""
        return self.encode_pairs(
            [serialize_product(p) for p in lefts], [serialize_product(p) for p in rights]
        )
