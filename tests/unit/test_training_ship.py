"""make ship-model: one model in models/, fp16 weights that load back as the same fp32 model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from streamer.model.artifact import read_meta
from streamer.training.ship import ship


def test_ship_replaces_the_previous_model_with_fp16_weights(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from streamer.model.artifact import load_trained

    trained = tmp_path / "tiny-multitask-v9"
    shutil.copytree(tiny_artifact, trained)
    (trained / "eval.json").write_text(json.dumps({"intent": {}}))
    models = tmp_path / "models"
    (models / "old-model-v1").mkdir(parents=True)
    out = ship(trained, models)
    assert sorted(p.name for p in models.iterdir()) == ["tiny-multitask-v9"]
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.float16}
    assert read_meta(out) == read_meta(tiny_artifact)
    model, _ = load_trained(out)
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(SystemExit, match="lacks"):
        ship(tiny_artifact, models)  # no eval.json: not from make model
