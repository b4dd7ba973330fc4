"""cpu target on the tiny model, and the parity gate's logic on fixed arrays.

Nothing here asserts what depends on the machine's int8 kernels (VNNI or not): the gate's
verdicts are tested with given reference/candidate outputs, and int8 is compared with fp32
only on inputs whose fp32 labels and decisions have a wide margin (not coin flips).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compile.cpu import INT8_RECIPES, PORTABLE_RECIPES, choose_default
from compile.parity import golden_batches, torch_forward
from compile.sample import builtin_sample
from streamer.model.artifact import load_trained, read_meta
from streamer.model.backend_ort import OrtForward
from streamer.model.hardware import RELEVANT_FLAGS
from streamer.model.manifest import read_manifest
from streamer.model.network import ServingModel
from streamer.model.parity import (
    GOLDEN_FILE,
    GoldenBatch,
    check,
    compare,
    load_golden,
    run_batches,
    save_golden,
)
from streamer.model.tasks import Task
from streamer.model.tokenize import Encoder

# Margins far beyond int8 rounding of this model: a top-1 probability lead of 0.25, a duplicate
# score 0.25 away from the threshold.
MARGIN = 0.25


def test_compare_reports_a_failed_floor() -> None:
    ref = (np.array([[0.9, 0.1], [0.2, 0.8]], np.float32), np.array([[0.9], [0.1]], np.float32))
    cand = (np.array([[0.1, 0.9], [0.2, 0.8]], np.float32), np.array([[0.9], [0.1]], np.float32))
    result = compare(ref, cand, 0.5)
    assert result["intent_label_agreement"] == 0.5
    assert result["duplicate_decision_agreement"] == 1.0
    assert not result["passed"]


def test_compare_passes_at_the_floor_and_fails_just_below() -> None:
    labels = np.tile(np.array([[0.8, 0.2]], np.float32), (100, 1))
    flipped = labels.copy()
    flipped[0] = [0.2, 0.8]  # 99 of 100 agree: exactly the 99% floor
    dup = np.full((100, 1), 0.9, np.float32)
    assert compare((labels, dup), (flipped, dup), 0.5)["passed"]
    flipped[1] = [0.2, 0.8]  # 98 of 100
    assert not compare((labels, dup), (flipped, dup), 0.5)["passed"]
    worse = dup.copy()
    worse[:2] = 0.1  # two decisions flip
    assert not compare((labels, dup), (labels, worse), 0.5)["passed"]


def test_compare_does_not_count_a_tie_on_the_threshold_as_a_flip() -> None:
    ref = (np.eye(2, dtype=np.float32), np.array([[0.7], [0.2]], np.float32))
    cand = (np.eye(2, dtype=np.float32), np.array([[0.6999999], [0.2]], np.float32))
    result = compare(ref, cand, 0.7)
    assert result["duplicate_decision_agreement"] == 1.0
    assert result["duplicate_ties_at_threshold"] == 1


def test_default_falls_back_to_fp32_when_int8_misses_parity() -> None:
    ok = {"int8": {"parity": {"passed": True}}, "fp32": {"parity": {"passed": True}}}
    bad = {"int8": {"parity": {"passed": False}}, "fp32": {"parity": {"passed": True}}}
    assert choose_default(ok)[0] == "int8"
    name, reason = choose_default(bad)
    assert name == "fp32" and "missed the parity floor" in reason


def _golden(rng: np.random.Generator) -> list[GoldenBatch]:
    ids = rng.integers(1000, 2000, (4, 8)).astype(np.int32)
    ones, zeros = np.ones_like(ids), np.zeros_like(ids)
    return [
        GoldenBatch(Task.INTENT, ids, ones, zeros, rng.random((3, 4)).astype(np.float32)),
        GoldenBatch(Task.DUPLICATE, ids, ones, zeros, rng.random((4, 1)).astype(np.float32)),
    ]


def test_golden_batches_round_trip_and_judge_a_forward(tmp_path: Path) -> None:
    golden = _golden(np.random.default_rng(0))
    save_golden(tmp_path / GOLDEN_FILE, golden)
    loaded = load_golden(tmp_path / GOLDEN_FILE)
    assert [(b.task, b.rows) for b in loaded] == [(Task.INTENT, 3), (Task.DUPLICATE, 4)]
    for a, b in zip(golden, loaded, strict=True):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.expected, b.expected)

    by_ids = {b.task: b.expected for b in golden}

    def exact(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, ...]:
        pad = np.zeros((1, 4), np.float32)
        return np.vstack([by_ids[Task.INTENT], pad]), by_ids[Task.DUPLICATE]

    def inverted(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, ...]:
        intent, dup = exact(ids, mask, types)
        return -intent, 1.0 - dup

    assert check(exact, loaded, 0.5)["passed"]  # type: ignore[arg-type]
    assert not check(inverted, loaded, 0.5)["passed"]  # type: ignore[arg-type]
    intent, dup = run_batches(exact, loaded)  # type: ignore[arg-type]
    assert intent.shape == (3, 4) and dup.shape == (4, 1)


def test_manifest_records_golden_set_recipe_and_compile_cpu(tiny_cpu_artifact: Path) -> None:
    manifest = read_manifest(tiny_cpu_artifact)
    assert manifest["golden"] == GOLDEN_FILE and GOLDEN_FILE in manifest["files"]
    golden = load_golden(tiny_cpu_artifact / GOLDEN_FILE)
    sample = builtin_sample()
    assert sum(b.rows for b in golden if b.task == Task.INTENT) == len(sample.queries)
    assert sum(b.rows for b in golden if b.task == Task.DUPLICATE) == len(sample.lefts)
    cpu = manifest["built"]["cpu"]
    assert cpu["machine"] and set(cpu["flags"]) <= set(RELEVANT_FLAGS)
    assert manifest["variants"]["int8"]["quantization"]["recipe"] in INT8_RECIPES
    assert manifest["fallback_variant"] == "fp32"
    # The default is whatever the gate decided on the compile machine, never assumed.
    assert manifest["default_variant"] == choose_default(manifest["variants"])[0]


def test_fp32_onnx_matches_torch_to_float_precision(tiny_cpu_artifact: Path) -> None:
    parity = read_manifest(tiny_cpu_artifact)["variants"]["fp32"]["parity"]
    assert parity["passed"]
    assert parity["intent_max_abs_diff"] < 1e-4
    assert parity["duplicate_max_abs_diff"] < 1e-4


def _wide_margin_rows(
    intent: np.ndarray, dup: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    top2 = np.sort(intent, axis=-1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > MARGIN, np.abs(dup[:, 0] - threshold) > MARGIN


# Only the recipes that cannot saturate: plain "s8" flips wide-margin labels on AVX2-only CPUs
# (its result depends on the machine, so it is checked where it runs, by the loader).
@pytest.mark.parametrize("recipe", PORTABLE_RECIPES)
def test_portable_int8_recipes_keep_every_wide_margin_label_and_decision(
    recipe: str, tiny_artifact: Path, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    from compile.cpu import FP32_FILE, quantize_int8

    int8 = tmp_path / f"{recipe}.onnx"
    quantize_int8(tiny_cpu_artifact / FP32_FILE, int8, recipe)
    model, meta = load_trained(tiny_artifact)
    golden = golden_batches(
        torch_forward(ServingModel(model).eval()),
        Encoder.from_artifact(tiny_cpu_artifact),
        meta,
        builtin_sample(),
    )
    ref_intent, ref_dup = run_batches(torch_forward(ServingModel(model).eval()), golden)
    got_intent, got_dup = run_batches(OrtForward(int8, threads=1), golden)
    wide_i, wide_d = _wide_margin_rows(ref_intent, ref_dup, meta.duplicate_threshold)
    assert wide_i.sum() >= 4 and wide_d.sum() >= 2, "the sample needs wide-margin rows"
    np.testing.assert_array_equal(
        got_intent[wide_i].argmax(-1), ref_intent[wide_i].argmax(-1), err_msg=recipe
    )
    np.testing.assert_array_equal(
        got_dup[wide_d] >= meta.duplicate_threshold,
        ref_dup[wide_d] >= meta.duplicate_threshold,
        err_msg=recipe,
    )


def test_unknown_recipe_is_refused(tiny_cpu_artifact: Path, tmp_path: Path) -> None:
    from compile.cpu import FP32_FILE, quantize_int8

    with pytest.raises(ValueError, match="unknown int8 recipe"):
        quantize_int8(tiny_cpu_artifact / FP32_FILE, tmp_path / "x.onnx", "int4")


def test_compiled_copy_keeps_the_trained_metadata(
    tiny_artifact: Path, tiny_cpu_artifact: Path
) -> None:
    assert read_meta(tiny_cpu_artifact) == read_meta(tiny_artifact)


def test_without_the_data_the_parity_sample_is_the_bundled_real_one(tmp_path: Path) -> None:
    from compile.sample import bundled_sample, default_sample

    sample = default_sample(tmp_path / "no-such-data")
    assert sample.source.startswith("bundled sample")
    assert (len(sample.queries), len(sample.lefts)) == (256, 288)
    assert sample == bundled_sample()


def test_refine_margins_cover_the_largest_error_seen() -> None:
    from compile.cpu import refine_margins

    ref = (np.array([[0.9, 0.1], [0.6, 0.4]], np.float32), np.array([[0.5], [0.2]], np.float32))
    cand = (np.array([[0.8, 0.2], [0.6, 0.4]], np.float32), np.array([[0.55], [0.2]], np.float32))
    margins = refine_margins(ref, cand)
    assert margins["duplicate_margin"] == pytest.approx(1.1 * 0.05 + 0.005, abs=1e-4)
    assert margins["intent_gap"] == pytest.approx(2.2 * 0.1 + 0.005, abs=1e-4)
    huge = refine_margins(ref, (cand[0], np.array([[1.0], [0.9]], np.float32)))
    assert huge["duplicate_margin"] == 0.5  # capped: refining everything is fp32 served slowly


def test_refinement_reruns_exactly_the_rows_near_a_decision(tiny_cpu_artifact: Path) -> None:
    from compile.cpu import FP32_FILE, INT8_FILE
    from streamer.model.backend_ort import RefinedForward

    batch = Encoder.from_artifact(tiny_cpu_artifact).encode_queries(
        ["where is my order", "lamp", "the mentalist season 3", "tv", "refund", "lego set"]
    )
    arrays = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    fast = OrtForward(tiny_cpu_artifact / INT8_FILE, threads=1)(*arrays)
    exact = OrtForward(tiny_cpu_artifact / FP32_FILE, threads=1)(*arrays)

    def refined(margin: float, gap: float) -> RefinedForward:
        return RefinedForward(
            tiny_cpu_artifact / INT8_FILE, tiny_cpu_artifact / FP32_FILE, 1,
            threshold=0.5, duplicate_margin=margin, intent_gap=gap,
        )  # fmt: skip

    none = refined(0.0, 0.0)
    np.testing.assert_array_equal(none(*arrays, task=Task.INTENT)[0], fast[0])
    assert none.rows_refined == 0
    every = refined(1.0, 2.0)
    np.testing.assert_allclose(every(*arrays, task=Task.INTENT)[0], exact[0], atol=1e-6)
    assert every.rows_refined == len(batch.input_ids)
    # Task-aware: an intent batch is judged on its intents only, whatever its pair scores say.
    dup_only = refined(1.0, 0.0)
    dup_only(*arrays, task=Task.INTENT)
    assert dup_only.rows_refined == 0
    gap = np.sort(fast[0], axis=1)
    near = int(((gap[:, -1] - gap[:, -2]) < 0.3).sum())
    some = refined(0.0, 0.3)
    some(*arrays, task=Task.INTENT)
    assert some.rows_refined == near


def test_the_manifest_says_whether_int8_is_refined_and_why(tiny_cpu_artifact: Path) -> None:
    int8 = read_manifest(tiny_cpu_artifact)["variants"]["int8"]
    assert "parity_int8_alone" in int8
    assert ("refine" in int8) != ("refine_refused" in int8)
    if "refine" in int8:
        assert int8["refine"]["exact_variant"] == "fp32"
        assert 0.0 <= int8["refine"]["rows_refined"] <= 0.25


def test_the_export_is_fused_and_the_manifest_says_how(tiny_cpu_artifact: Path) -> None:
    # The tiny model (2 layers, 2 heads, width 32) is a shape ORT's BERT optimizer fuses.
    variants = read_manifest(tiny_cpu_artifact)["variants"]
    for name in ("fp32", "int8"):
        graph = variants[name]["graph"]
        assert "eager attention" in graph["export"]
        assert graph["fusion"]["applied"] is True
        fused = graph["fusion"]["fused_operators"]
        assert fused["Attention"] == 2 and fused["EmbedLayerNormalization"] == 1
        assert fused["SkipLayerNormalization"] == 4
    assert variants["fp32"]["graph"]["operators"]["Attention"] == 2
    int8_ops = variants["int8"]["graph"]["operators"]
    assert int8_ops["QAttention"] == 2 and "Attention" not in int8_ops
    quantization = variants["int8"]["quantization"]
    assert quantization["layout"] == "fused" and "Attention" in quantization["ops_quantized"]


def test_recipes_keep_the_same_layers_fp32_in_either_layout(
    tiny_artifact: Path, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    from compile.cpu import FP32_FILE, export_onnx, fuse_bert, quantize_int8, weight_layout

    fused_layout, fused_weights = weight_layout(tiny_cpu_artifact / FP32_FILE)
    assert (fused_layout, len(fused_weights)) == ("fused", 2 * 3)
    fused = quantize_int8(tiny_cpu_artifact / FP32_FILE, tmp_path / "f.onnx")
    assert fused["fp32_nodes"] == [fused_weights[2], fused_weights[5]]  # FFN out of each layer

    # The unfused fallback: a fusion that misses any layer keeps the exported graph as it is.
    model, _ = load_trained(tiny_artifact)
    export_onnx(ServingModel(model).eval(), tmp_path / "unfused.onnx")
    info = fuse_bert(
        tmp_path / "unfused.onnx", tmp_path / "fp32.onnx", num_heads=2, hidden_size=32, num_layers=3
    )
    assert info["applied"] is False and "2 of 3 attention layers fused" in info["reason"]
    layout, weights = weight_layout(tmp_path / "fp32.onnx")
    assert (layout, len(weights)) == ("unfused", 2 * 6)
    unfused = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "u.onnx")
    assert unfused["layout"] == "unfused" and unfused["ops_quantized"] == ["MatMul"]
    assert unfused["fp32_nodes"] == [weights[5], weights[11]]


def test_a_graph_of_neither_layout_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compile.cpu import quantize_int8

    nodes, inits, prev = [], [], "x"
    for i in range(4):  # 4 weight MatMuls: neither 6 nor 3 per layer
        inits.append(numpy_helper.from_array(np.eye(4, dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4])],
        inits,
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "odd.onnx"))
    with pytest.raises(ValueError, match="fit neither BERT layout"):
        quantize_int8(tmp_path / "odd.onnx", tmp_path / "odd8.onnx")
