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

from compile.common import base_manifest, prepare_out_dir
from compile.parity import golden_batches, torch_forward
from compile.sample import ParitySample
from streamer.model.artifact import load_trained
from streamer.model.backend_ort import INPUT_NAMES, OUTPUT_NAMES, OrtForward
from streamer.model.manifest import write_manifest
from streamer.model.network import ServingModel
from streamer.model.parity import GOLDEN_FILE, check, save_golden
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
}
# Recipes whose int8 sums cannot saturate in any x86 kernel, so their results do not hinge on
# VNNI. Measured: under QEMU emulating an AVX2-only CPU (`make test-avx2`), "s8" flipped 4 of 19
# wide-margin intent labels of the tiny model; these two flipped none.
PORTABLE_RECIPES = ("s8-reduce-range", "u8u8")
DEFAULT_INT8_RECIPE = "s8-reduce-range"


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
    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        weight_type=getattr(QuantType, options["weight_type"]),
        per_channel=options["per_channel"],
        reduce_range=options["reduce_range"],
        op_types_to_quantize=["MatMul", "Gemm"],
    )
    return {"recipe": recipe, **options}


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
) -> dict[str, Any]:
    """Build the cpu serving artifact in `out_dir`; returns the manifest written."""
    model, meta = load_trained(trained_dir)
    serving = ServingModel(model).eval()
    prepare_out_dir(trained_dir, out_dir)
    export_onnx(serving, out_dir / FP32_FILE)
    quantization = quantize_int8(out_dir / FP32_FILE, out_dir / INT8_FILE, int8_recipe)

    golden = golden_batches(torch_forward(serving), Encoder.from_artifact(out_dir), meta, sample)
    save_golden(out_dir / GOLDEN_FILE, golden)
    variants: dict[str, Any] = {}
    for name, file, precision in (
        ("int8", INT8_FILE, f"int8 weights ({int8_recipe}), dynamically quantized activations"),
        ("fp32", FP32_FILE, "fp32"),
    ):
        variants[name] = {
            "file": file,
            "precision": precision,
            "runtime": "onnxruntime CPUExecutionProvider",
            "parity": check(OrtForward(out_dir / file, threads), golden, meta.duplicate_threshold),
        }
    variants["int8"]["quantization"] = quantization
    manifest = base_manifest(meta, "cpu", sample.source, trained_dir)
    manifest["variants"] = variants
    manifest["default_variant"], manifest["default_variant_reason"] = choose_default(variants)
    manifest["fallback_variant"] = "fp32"
    manifest["golden"] = GOLDEN_FILE
    manifest["hardware"] = {"requires": "x86-64 or arm64 CPU with onnxruntime"}
    return write_manifest(out_dir, manifest)
