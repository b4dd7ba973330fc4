"""cuda target without a GPU: capture plan, dtype handling, padding to the bucket, artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compile.cuda import compile_cuda, plan_cuda
from compile.sample import builtin_sample
from streamer.model.artifact import (
    BackendUnavailableError,
    load_trained,
    read_meta,
)
from streamer.model.backend_cuda import GraphForward, torch_dtype
from streamer.model.buckets import DEFAULT_BUCKETS
from streamer.model.manifest import read_manifest, verify_checksums
from streamer.model.network import ServingModel
from streamer.model.parity import check, load_golden
from streamer.model.runner import load_runner
from streamer.model.tasks import Task
from streamer.model.tokenize import Encoder


def test_plan_captures_every_bucket_of_both_tasks(tiny_artifact: Path) -> None:
    plan = plan_cuda(read_meta(tiny_artifact), "bfloat16")
    expected = set(DEFAULT_BUCKETS[Task.INTENT].shapes()) | set(
        DEFAULT_BUCKETS[Task.DUPLICATE].shapes()
    )
    assert set(plan.shapes) == expected and plan.graph_count == len(expected)
    assert plan.min_capability == (8, 0)
    assert plan.weights_file == "model.bfloat16.safetensors"
    assert plan_cuda(read_meta(tiny_artifact), "float16").min_capability == (7, 0)
    with pytest.raises(ValueError, match="unsupported dtype"):
        plan_cuda(read_meta(tiny_artifact), "int4")


def test_dtype_names() -> None:
    assert torch_dtype("bfloat16") is torch.bfloat16
    assert torch_dtype("float16") is torch.float16
    with pytest.raises(ValueError):
        torch_dtype("fp8")


def test_forward_pads_to_the_bucket_and_slices_real_rows(tiny_artifact: Path) -> None:
    model, _ = load_trained(tiny_artifact)
    serving = ServingModel(model).eval()
    forward = GraphForward(serving, [(1, 16), (8, 16), (8, 64)], "cpu", use_graphs=False)
    assert not forward.use_graphs
    batch = Encoder.from_artifact(tiny_artifact).encode_queries(
        ["a lamp", "where is my refund", "tv"]
    )
    intent, dup = forward(
        batch.input_ids[:, :10], batch.attention_mask[:, :10], batch.token_type_ids[:, :10]
    )
    assert intent.shape == (3, 4) and dup.shape == (3, 1)
    assert intent.dtype == dup.dtype == np.float32
    with torch.inference_mode():
        ref = serving(
            *(
                torch.from_numpy(a)
                for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids)
            )
        )
    np.testing.assert_allclose(intent, ref[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no compiled shape"):
        forward(*(np.ones((9, 16), np.int32) for _ in range(3)))


def test_cuda_artifact_is_written_with_bf16_weights(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-cuda"
    manifest = compile_cuda(tiny_artifact, out, builtin_sample(), dtype="bfloat16")
    verify_checksums(out, read_manifest(out))
    info = manifest["variants"]["bfloat16"]
    assert info["cuda_graphs"] and info["min_capability"] == [8, 0]
    assert len(info["graphs"]) == len(set(map(tuple, info["graphs"])))
    served, _ = load_trained(out, weights=info["file"], keep_dtype=True)
    assert next(served.parameters()).dtype == torch.bfloat16
    parity = info["parity"]
    if not torch.cuda.is_available():
        assert "no CUDA device" in parity["measured_on"]
    assert parity["intent_max_abs_diff"] < 0.1
    assert manifest["target"] == "cuda" and manifest["default_variant"] == "bfloat16"


def test_golden_inputs_pass_on_the_stand_in_and_catch_a_wrong_model(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiny-cuda"
    manifest = compile_cuda(tiny_artifact, out, builtin_sample(), dtype="bfloat16")
    golden = load_golden(out / manifest["golden"])
    sample = builtin_sample()
    assert sum(b.rows for b in golden if b.task == Task.INTENT) == len(sample.queries)
    info = manifest["variants"]["bfloat16"]
    served, _ = load_trained(out, weights=info["file"], keep_dtype=True)
    shapes = [tuple(s) for s in info["graphs"]]
    forward = GraphForward(ServingModel(served), shapes, "cpu", use_graphs=False)
    threshold = manifest["duplicate_threshold"]
    # The same verdict compile stored (same inputs, same stand-in forward).
    assert check(forward, golden, threshold)["passed"] == info["parity"]["passed"]
    # A model with other weights must be caught before it serves.
    with torch.no_grad():
        for p in served.intent_head.parameters():
            p.mul_(-3.0)
    assert not check(forward, golden, threshold)["passed"]


def test_runner_refuses_cuda_artifact_without_a_gpu(tiny_artifact: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "tiny-cuda"
    compile_cuda(tiny_artifact, out, builtin_sample(), dtype="bfloat16")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        load_runner(out, force=True)
