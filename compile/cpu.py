"""`cpu` target: ONNX export, ONNX Runtime int8 dynamic quantization, fp32 ONNX as fallback.

Dynamic batch and sequence axes (ORT does not need static shapes; the buckets still bound what
the service sends). int8 is the default variant only if it keeps >= 99% intent label agreement
and duplicate decisions against the fp32 PyTorch reference on the parity sample; otherwise the
manifest says so, the fp32 ONNX graph becomes the default and the loader refuses int8 unless
forced. The sample's batches and reference outputs go into the artifact (`golden.npz`), so the
loader repeats the check on the machine that serves (int8 kernels differ by CPU).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from compile.common import base_manifest, prepare_out_dir
from compile.parity import golden_batches, torch_forward
from compile.sample import ParitySample
from streamer.model.artifact import load_trained
from streamer.model.backend_ort import INPUT_NAMES, OUTPUT_NAMES, OrtForward, RefinedForward
from streamer.model.manifest import write_manifest
from streamer.model.network import ServingModel
from streamer.model.parity import (
    GOLDEN_FILE,
    check,
    expected_outputs,
    run_batches,
    save_golden,
)
from streamer.model.tokenize import Encoder

FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.int8.onnx"
OPSET = 18

# Dynamic int8 recipes (weights quantized offline, activations at run time); `compile.quant`
# measures them side by side. Per-channel scales kept the tiny random model's intent labels at
# 100% agreement where per-tensor scales flipped 2 of 24.
INT8_RECIPES: dict[str, dict[str, Any]] = {
    "s8": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
    # 7-bit weights: u8 x s7 pairs cannot saturate the int16 sums of AVX2 / AVX-512BW kernels.
    "s8-reduce-range": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    "u8u8": {"weight_type": "QUInt8", "per_channel": True, "reduce_range": False},
    # The heads (Gemm: the only 2-D linear layers) stay fp32: the duplicate decision is made
    # there, on a threshold, where int8 noise flips the pairs that sit near it.
    "u8u8-body": {
        "weight_type": "QUInt8",
        "per_channel": True,
        "reduce_range": False,
        "ops": ["MatMul"],
    },
    "s8-reduce-range-body": {
        "weight_type": "QInt8",
        "per_channel": True,
        "reduce_range": True,
        "ops": ["MatMul"],
    },
    # ... and every FFN output projection too: measured on a trained model (compile.quant), it
    # carries the activation outliers, and keeping it fp32 halved the largest score errors.
    "u8u8-body-ffn-out-fp32": {
        "weight_type": "QUInt8",
        "per_channel": True,
        "reduce_range": False,
        "ops": ["MatMul"],
        "fp32_positions": [5],
    },
}
WEIGHT_MATMULS_PER_LAYER = 6  # query, key, value, attention output, FFN in, FFN out
# Recipes whose int8 sums cannot saturate in any x86 kernel, so their results do not hinge on
# VNNI. Measured: under QEMU emulating an AVX2-only CPU (`make test-avx2`), "s8" flipped 4 of 19
# wide-margin intent labels of the tiny model; these two flipped none.
PORTABLE_RECIPES = (
    "s8-reduce-range", "u8u8", "u8u8-body", "s8-reduce-range-body", "u8u8-body-ffn-out-fp32"
)  # fmt: skip
# Measured on a trained model (BENCHMARKS.md, `compile.quant`): the smallest int8 errors, and
# with fp32 re-runs near decisions (3.5% of rows) full agreement with fp32.
DEFAULT_INT8_RECIPE = "u8u8-body-ffn-out-fp32"
# Refinement that re-runs more rows than this in fp32 costs more than it saves: not used.
MAX_REFINED_SHARE = 0.25


def export_onnx(serving_model: Any, path: Path) -> None:
    """Export with dynamic (batch, seq_len) axes through the dynamo exporter, weights inline."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    seq_len = torch.export.Dim("seq_len", min=2, max=512)
    example = tuple(torch.full((2, 16), 1000, dtype=torch.int32) for _ in INPUT_NAMES)
    with warnings.catch_warnings():
        # The exporter warns that axis names are merged when they share constraints; harmless.
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            serving_model,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={name: {0: batch, 1: seq_len} for name in INPUT_NAMES},
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )


def quantize_int8(
    fp32_path: Path, int8_path: Path, recipe: str = DEFAULT_INT8_RECIPE
) -> dict[str, Any]:
    """ORT dynamic quantization of MatMul/Gemm weights by a named recipe; returns the recipe.

    Embeddings (Gather) stay fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if recipe not in INT8_RECIPES:
        raise ValueError(f"unknown int8 recipe {recipe!r}; choose from {sorted(INT8_RECIPES)}")
    options = INT8_RECIPES[recipe]
    exclude: list[str] = []
    if options.get("fp32_positions"):
        weights = weight_matmuls(fp32_path)
        if len(weights) % WEIGHT_MATMULS_PER_LAYER:
            raise ValueError(f"{len(weights)} weight MatMuls: not a BERT encoder's layout")
        keep = set(options["fp32_positions"])
        exclude = [n for i, n in enumerate(weights) if i % WEIGHT_MATMULS_PER_LAYER in keep]
    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        weight_type=getattr(QuantType, options["weight_type"]),
        per_channel=options["per_channel"],
        reduce_range=options["reduce_range"],
        op_types_to_quantize=options.get("ops", ["MatMul", "Gemm"]),
        nodes_to_exclude=exclude,
    )
    return {"recipe": recipe, **options, "fp32_nodes": exclude}


def weight_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes whose second input is a weight (an initializer), in graph order: the
    encoder's linear layers, WEIGHT_MATMULS_PER_LAYER per layer."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def refine_margins(
    reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """How near a decision a row must be for int8 to be able to flip it, from the sample.

    A duplicate score moves by at most the largest |int8 - fp32| seen; two intents' gap by at
    most twice the largest probability error. 10% and 0.005 on top for what the sample missed.
    """
    ref_i, ref_d = reference
    cand_i, cand_d = candidate
    dup = float(np.max(np.abs(cand_d - ref_d))) if len(ref_d) else 0.0
    intent = float(np.max(np.abs(cand_i - ref_i))) if len(ref_i) else 0.0
    return {
        "duplicate_margin": round(min(0.5, 1.1 * dup + 0.005), 4),
        "intent_gap": round(min(1.0, 2.2 * intent + 0.005), 4),
    }


def choose_default(variants: dict[str, Any]) -> tuple[str, str]:
    """int8 serves by default only when it met parity; else the fp32 fallback does.

    The loader still refuses an explicit int8 request unless forced, and the manifest keeps
    the figures that decided it.
    """
    if variants["int8"]["parity"]["passed"]:
        return "int8", "int8 met the parity floor"
    return "fp32", "int8 missed the parity floor; fp32 ONNX is the fallback (int8 only if forced)"


def compile_cpu(
    trained_dir: Path,
    out_dir: Path,
    sample: ParitySample,
    *,
    threads: int | None = None,
    int8_recipe: str = DEFAULT_INT8_RECIPE,
    calibration: ParitySample | None = None,
) -> dict[str, Any]:
    """Build the cpu serving artifact in `out_dir`; returns the manifest written.

    `calibration`: other rows than the parity sample's, on which the int8 refinement margins
    are set (so the parity check judges them on rows they were not fitted to); default: the
    parity sample itself (tests, the built-in texts).
    """
    model, meta = load_trained(trained_dir)
    serving = ServingModel(model).eval()
    prepare_out_dir(trained_dir, out_dir)
    export_onnx(serving, out_dir / FP32_FILE)
    quantization = quantize_int8(out_dir / FP32_FILE, out_dir / INT8_FILE, int8_recipe)

    encoder = Encoder.from_artifact(out_dir)
    golden = golden_batches(torch_forward(serving), encoder, meta, sample)
    save_golden(out_dir / GOLDEN_FILE, golden)
    runtime = "onnxruntime CPUExecutionProvider"
    threshold = meta.duplicate_threshold
    fp32 = OrtForward(out_dir / FP32_FILE, threads)
    int8 = OrtForward(out_dir / INT8_FILE, threads)
    alone = check(int8, golden, threshold)
    fit = (
        golden
        if calibration is None
        else golden_batches(torch_forward(serving), encoder, meta, calibration)
    )
    margins = refine_margins(expected_outputs(fit), run_batches(int8, fit))
    refined = RefinedForward(
        out_dir / INT8_FILE, out_dir / FP32_FILE, threads, threshold=threshold, **margins
    )
    refined_parity = check(refined, golden, threshold)
    share = refined.rows_refined / max(1, refined.rows_seen)
    int8_variant: dict[str, Any] = {
        "file": INT8_FILE,
        "precision": f"int8 weights ({int8_recipe}), dynamically quantized activations",
        "runtime": runtime,
        "quantization": quantization,
        "parity_int8_alone": alone,
        "parity": alone,
    }
    if share <= MAX_REFINED_SHARE:
        int8_variant["precision"] += "; rows near a decision re-run in fp32"
        int8_variant["parity"] = refined_parity
        int8_variant["refine"] = {
            **margins,
            "exact_variant": "fp32",
            "rows_refined": round(share, 4),
            "margins_fitted_on": (calibration or sample).source,
        }
    else:
        int8_variant["refine_refused"] = (
            f"refinement would re-run {share:.0%} of the sample's rows in fp32 (limit "
            f"{MAX_REFINED_SHARE:.0%}): int8 alone is judged"
        )
    variants: dict[str, Any] = {
        "int8": int8_variant,
        "fp32": {
            "file": FP32_FILE,
            "precision": "fp32",
            "runtime": runtime,
            "parity": check(fp32, golden, threshold),
        },
    }
    manifest = base_manifest(meta, "cpu", sample.source, trained_dir)
    manifest["variants"] = variants
    manifest["default_variant"], manifest["default_variant_reason"] = choose_default(variants)
    manifest["fallback_variant"] = "fp32"
    manifest["golden"] = GOLDEN_FILE
    manifest["hardware"] = {"requires": "x86-64 or arm64 CPU with onnxruntime"}
    return write_manifest(out_dir, manifest)
