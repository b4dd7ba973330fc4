"""cpu target on the tiny model: int8 parity against the fp32 reference, independently checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compile.parity import compare, outputs, torch_forward
from compile.sample import builtin_sample
from streamer.model.artifact import encoder_for, load_trained, read_meta
from streamer.model.manifest import read_manifest
from streamer.model.network import ServingModel
from streamer.model.runner import load_runner
from streamer.model.tasks import Task


def test_int8_meets_parity_on_the_tiny_model(tiny_cpu_artifact: Path) -> None:
    parity = read_manifest(tiny_cpu_artifact)["variants"]["int8"]["parity"]
    assert parity["passed"], parity
    assert parity["intent_label_agreement"] >= 0.99
    assert parity["duplicate_decision_agreement"] >= 0.99
    assert parity["queries"] == len(builtin_sample().queries)


def test_int8_runner_agrees_with_fp32_torch(tiny_artifact: Path, tiny_cpu_artifact: Path) -> None:
    model, meta = load_trained(tiny_artifact)
    runner = load_runner(tiny_cpu_artifact, threads=1)
    encoder = encoder_for(tiny_cpu_artifact)
    sample = builtin_sample()

    def via_runner(
        ids: np.ndarray, mask: np.ndarray, types: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return runner.run(Task.INTENT, ids, mask, types), runner.run(
            Task.DUPLICATE, ids, mask, types
        )

    reference = outputs(torch_forward(ServingModel(model).eval()), encoder, meta, sample)
    result = compare(
        reference, outputs(via_runner, encoder, meta, sample), meta.duplicate_threshold
    )
    assert result["passed"], result
    assert result["intent_max_abs_diff"] < 0.05


def test_fp32_onnx_matches_torch_to_float_precision(tiny_cpu_artifact: Path) -> None:
    parity = read_manifest(tiny_cpu_artifact)["variants"]["fp32"]["parity"]
    assert parity["intent_max_abs_diff"] < 1e-4
    assert parity["duplicate_max_abs_diff"] < 1e-4


def test_compare_reports_a_failed_floor() -> None:
    ref = (np.array([[0.9, 0.1], [0.2, 0.8]], np.float32), np.array([[0.9], [0.1]], np.float32))
    cand = (np.array([[0.1, 0.9], [0.2, 0.8]], np.float32), np.array([[0.9], [0.1]], np.float32))
    result = compare(ref, cand, 0.5)
    assert result["intent_label_agreement"] == 0.5
    assert result["duplicate_decision_agreement"] == 1.0
    assert not result["passed"]


def test_compiled_copy_keeps_the_trained_metadata(
    tiny_artifact: Path, tiny_cpu_artifact: Path
) -> None:
    assert read_meta(tiny_cpu_artifact) == read_meta(tiny_artifact)


def test_compare_does_not_count_a_tie_on_the_threshold_as_a_flip() -> None:
    ref = (np.eye(2, dtype=np.float32), np.array([[0.7], [0.2]], np.float32))
    cand = (np.eye(2, dtype=np.float32), np.array([[0.6999999], [0.2]], np.float32))
    result = compare(ref, cand, 0.7)
    assert result["duplicate_decision_agreement"] == 1.0
    assert result["duplicate_ties_at_threshold"] == 1


def test_default_falls_back_to_fp32_when_int8_misses_parity() -> None:
    from compile.cpu import choose_default

    ok = {"int8": {"parity": {"passed": True}}, "fp32": {"parity": {"passed": True}}}
    bad = {"int8": {"parity": {"passed": False}}, "fp32": {"parity": {"passed": True}}}
    assert choose_default(ok)[0] == "int8"
    name, reason = choose_default(bad)
    assert name == "fp32" and "missed the parity floor" in reason
