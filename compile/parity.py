"""Parity of a compiled variant against the fp32 PyTorch reference on the fixed sample.

Both sides see exactly the serving inputs: the sample is encoded by the artifact's Encoder and
padded to batch and sequence buckets, as the service will do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from compile.sample import ParitySample
from streamer.model.artifact import ModelMeta
from streamer.model.buckets import choose_batch
from streamer.model.manifest import MIN_AGREEMENT
from streamer.model.tasks import Task
from streamer.model.tokenize import EncodedBatch, Encoder

TIE_EPS = 1e-5

# (input_ids, attention_mask, token_type_ids) int32 (B, L) -> (intent probs (B, K), dup (B, 1))
Forward = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def bucketed_batches(
    encoder: Encoder, meta: ModelMeta, sample: ParitySample, task: Task
) -> Iterator[tuple[EncodedBatch, int]]:
    """The sample cut into serving batches: (batch padded to a batch bucket, real rows)."""
    step = meta.buckets[task].max_batch
    n = len(sample.queries) if task == Task.INTENT else len(sample.lefts)
    for start in range(0, n, step):
        if task == Task.INTENT:
            batch = encoder.encode_queries(sample.queries[start : start + step])
        else:
            batch = encoder.encode_pairs(
                sample.lefts[start : start + step], sample.rights[start : start + step]
            )
        real = batch.batch_size
        yield batch.pad_rows(choose_batch(meta.buckets[task], real)), real


def outputs(
    forward: Forward, encoder: Encoder, meta: ModelMeta, sample: ParitySample
) -> tuple[np.ndarray, np.ndarray]:
    """Intent probabilities on the sample's queries and duplicate scores on its pairs."""
    intent, dup = [], []
    for batch, real in bucketed_batches(encoder, meta, sample, Task.INTENT):
        intent.append(
            forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)[0][:real]
        )
    for batch, real in bucketed_batches(encoder, meta, sample, Task.DUPLICATE):
        dup.append(forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)[1][:real])
    return np.concatenate(intent).astype(np.float32), np.concatenate(dup).astype(np.float32)


def compare(
    reference: tuple[np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray],
    threshold: float,
    *,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    """Max abs differences, label and decision agreement, and whether the floor is met."""
    ref_i, ref_d = reference
    cand_i, cand_d = candidate
    label_agree = float(np.mean(ref_i.argmax(-1) == cand_i.argmax(-1)))
    # A reference score on the threshold itself (float precision) has no stable decision: the
    # threshold is a valid-split score, so the sample can hold the very pair that defines it.
    ties = np.abs(ref_d - threshold) < TIE_EPS
    same = ((ref_d >= threshold) == (cand_d >= threshold)) | ties
    decision_agree = float(np.mean(same))
    return {
        "queries": len(ref_i),
        "pairs": len(ref_d),
        "intent_max_abs_diff": float(np.max(np.abs(ref_i - cand_i))),
        "intent_label_agreement": label_agree,
        "duplicate_max_abs_diff": float(np.max(np.abs(ref_d - cand_d))),
        "duplicate_decision_agreement": decision_agree,
        "duplicate_ties_at_threshold": int(ties.sum()),
        "min_agreement": min_agreement,
        "passed": bool(label_agree >= min_agreement and decision_agree >= min_agreement),
    }


def torch_forward(serving_model: Any) -> Forward:
    """The fp32 PyTorch reference as a Forward."""
    import torch

    def forward(
        ids: np.ndarray, mask: np.ndarray, types: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            a, b = serving_model(*(torch.from_numpy(x) for x in (ids, mask, types)))
        return a.float().numpy(), b.float().numpy()

    return forward
