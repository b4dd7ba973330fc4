"""Heads' output shapes and ranges; the trained-artifact format and its label map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from streamer.model.artifact import (
    ArtifactError,
    load_trained,
    read_labels,
    read_meta,
    write_labels,
)
from streamer.model.network import ServingModel
from streamer.model.tasks import Task
from streamer.training.tiny import TINY_LABELS


def _inputs(batch: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 20000, (batch, seq_len), generator=gen, dtype=torch.int32)
    mask = torch.ones_like(ids)
    mask[:, seq_len // 2 :] = 0
    types = torch.zeros_like(ids)
    return ids, mask, types


@pytest.mark.parametrize(("batch", "seq_len"), [(1, 16), (5, 64)])
def test_heads_give_probabilities_of_the_right_shape(
    tiny_artifact: Path, batch: int, seq_len: int
) -> None:
    model, meta = load_trained(tiny_artifact)
    with torch.inference_mode():
        intent, dup = ServingModel(model)(*_inputs(batch, seq_len))
    assert intent.shape == (batch, len(meta.labels)) and dup.shape == (batch, 1)
    assert intent.dtype == dup.dtype == torch.float32
    torch.testing.assert_close(intent.sum(-1), torch.ones(batch))
    assert ((intent >= 0) & (intent <= 1)).all()
    assert ((dup >= 0) & (dup <= 1)).all()


def test_padding_does_not_change_the_scores(tiny_artifact: Path) -> None:
    model, _ = load_trained(tiny_artifact)
    ids, mask, types = _inputs(2, 16)
    wide = [torch.nn.functional.pad(t, (0, 16)) for t in (ids, mask, types)]
    with torch.inference_mode():
        a = ServingModel(model)(ids, mask, types)
        b = ServingModel(model)(*wide)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_label_map_round_trip(tmp_path: Path) -> None:
    labels = ("help", "media", "other", "product")
    write_labels(tmp_path / "labels.json", labels)
    assert read_labels(tmp_path / "labels.json") == labels
    with pytest.raises(ValueError):
        write_labels(tmp_path / "dup.json", ("a", "a"))


def test_meta_round_trip(tiny_artifact: Path) -> None:
    meta = read_meta(tiny_artifact)
    assert meta.labels == TINY_LABELS
    assert set(meta.buckets) == {Task.INTENT, Task.DUPLICATE}
    assert meta.full_name == tiny_artifact.name


def test_label_count_must_match_the_model(tiny_artifact: Path, copy_artifact) -> None:  # type: ignore[no-untyped-def]
    art = copy_artifact(tiny_artifact)
    (art / "labels.json").write_text(json.dumps({"intent": ["a", "b"]}))
    with pytest.raises(ArtifactError, match="2 labels"):
        read_meta(art)
