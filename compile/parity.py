"""The parity sample as serving batches, with the fp32 PyTorch reference's outputs.

Both sides see exactly the serving inputs: the sample is encoded by the artifact's Encoder and
padded to batch and sequence buckets, as the service will do. The batches and reference outputs
are stored in the artifact (`golden.npz`); every variant, here and on the serving machine, is
judged by `streamer.model.parity.check` on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from compile.sample import ParitySample
from streamer.model.artifact import ModelMeta
from streamer.model.buckets import choose_batch
from streamer.model.parity import Forward, GoldenBatch
from streamer.model.tasks import Task
from streamer.model.tokenize import EncodedBatch, Encoder


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


def golden_batches(
    reference: Forward, encoder: Encoder, meta: ModelMeta, sample: ParitySample
) -> list[GoldenBatch]:
    """Every serving batch of the sample with the reference's outputs on its real rows."""
    out = []
    for task in (Task.INTENT, Task.DUPLICATE):
        for batch, real in bucketed_batches(encoder, meta, sample, task):
            arrays = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
            expected = reference(*arrays)[0 if task == Task.INTENT else 1][:real]
            out.append(GoldenBatch(task, *arrays, expected=np.asarray(expected, np.float32)))
    return out


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
