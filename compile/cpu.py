"""`cpu` target: ONNX export, ORT BERT fusions, int8 dynamic quantization, fp32 ONNX as fallback.

The graph is traced by the TorchScript exporter with eager attention, then ONNX Runtime's BERT
optimizer fuses it (EmbedLayerNormalization, one Attention op per layer with Q/K/V packed,
BiasGelu, SkipLayerNormalization): the dynamo exporter's graph (sdpa attention) is not one the
optimizer recognises. The fused fp32 graph is the fp32 variant; int8 is that graph quantized
(Attention -> QAttention). Where the optimizer fuses nothing (a shape it does not know), the
unfused graph is used and the manifest says so.

Dynamic batch and sequence axes (ORT does not need static shapes; the buckets still bound what
the service sends). int8 is the default variant only if it keeps >= 99% intent label agreement
and duplicate decisions against the fp32 PyTorch reference on the parity sample; otherwise the
manifest says so, the fp32 ONNX graph becomes the default and the loader refuses int8 unless
forced. The sample's batches and reference outputs go into the artifact (`golden.npz`), so the
loader repeats the check on the machine that serves (int8 kernels differ by CPU).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
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
# The TorchScript exporter (the one whose graph ORT's BERT optimizer fuses); LayerNormalization
# is a single op from opset 17.
OPSET = 17

# Dynamic int8 recipes (weights quantized offline, activations at run time); `compile.quant`
# measures them side by side. Per-channel scales kept the tiny random model's intent labels at
# 100% agreement where per-tensor scales flipped 2 of 24.
INT8_RECIPES: dict[str, dict[str, Any]] = {
    "s8": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
    # 7-bit weights: u8 x s7 pairs cannot saturate the int16 sums of AVX2 / AVX-512BW kernels.
    "s8-reduce-range": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    "u8u8": {"weight_type": "QUInt8", "per_channel": True, "reduce_range": False},
    # Meant to keep the heads (Gemm: the only 2-D linear layers) fp32, the duplicate decision
    # being made there. But onnxruntime's dynamic quantizer rewrites every Gemm as MatMul + Add
    # before it picks ops (onnxruntime 1.32, `ONNXModel.replace_gemm_with_matmul`), so the
    # heads are quantized too, in the dynamo-exported artifacts before 2026-12-08 as well
    # (their int8 graphs hold no Gemm): "body" today means "not the embeddings".
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
        "fp32_roles": ["ffn_out"],
    },
}
# The encoder's weight MatMuls of one layer, in graph order, per graph layout: the unfused graph
# has one per linear layer; the fused one packs query/key/value into its Attention op (which
# the "MatMul" recipes quantize too: QAttention, it is the same linear layers).
LAYER_LAYOUTS: dict[str, tuple[str, ...]] = {
    "unfused": ("query", "key", "value", "attention_output", "ffn_in", "ffn_out"),
    "fused": ("attention_output", "ffn_in", "ffn_out"),
}
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


@contextlib.contextmanager
def eager_attention(module: Any) -> Iterator[None]:
    """Every attention config under `module` set to transformers' eager attention, restored after.

    Eager attention traces to the MatMul/Softmax pattern ORT's BERT optimizer fuses; sdpa does
    not fuse.
    """
    configs = {
        id(cfg): cfg
        for m in module.modules()
        if (cfg := getattr(m, "config", None)) is not None and hasattr(cfg, "_attn_implementation")
    }
    saved = {key: cfg._attn_implementation for key, cfg in configs.items()}
    try:
        for cfg in configs.values():
            cfg._attn_implementation = "eager"
        yield
    finally:
        for key, cfg in configs.items():
            cfg._attn_implementation = saved[key]


def export_onnx(serving_model: Any, path: Path) -> None:
    """Export with dynamic (batch, seq_len) axes through the TorchScript exporter, eager
    attention, weights inline: the unfused graph (`fuse_bert` fuses it)."""
    import torch

    example = (
        torch.full((2, 16), 1000, dtype=torch.int32),
        torch.ones((2, 16), dtype=torch.int32),
        torch.zeros((2, 16), dtype=torch.int32),  # type ids must be < type_vocab_size (2)
    )
    with eager_attention(serving_model), warnings.catch_warnings():
        # Known and harmless here, checked on torch 2.15 / transformers 5: the deprecation of
        # this exporter (chosen on purpose: the dynamo exporter's graph does not fuse) and of
        # a helper it calls; transformers' `attention_mask.shape[-1]` padding test, a constant
        # 0 here (no KV cache: kv_length is always the mask's length; padded rows match torch
        # to 1e-6, and the parity gate below judges padded batches); `hidden[:, 0]` exported
        # as Gather (a non-negative index).
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message="The feature will be removed", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", category=torch.jit.TracerWarning, module="transformers.masking_utils"
        )
        warnings.filterwarnings(
            "ignore", message="Exporting aten::index operator", category=UserWarning
        )
        torch.onnx.export(
            serving_model,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch", 1: "seq_len"} for name in INPUT_NAMES},
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
        )


def fuse_bert(
    src: Path, dst: Path, *, num_heads: int, hidden_size: int, num_layers: int
) -> dict[str, Any]:
    """ORT's BERT fusions of `src` into `dst`; returns what was fused.

    The fused graph is written only if every layer's attention fused (then the encoder's weight
    MatMuls follow LAYER_LAYOUTS["fused"]); otherwise `dst` is the unfused graph, with the
    reason. Graph-level only (`opt_level=0`): ORT's own session optimizations still run where
    it serves, for the machine it serves on.
    """
    info: dict[str, Any] = {"tool": "onnxruntime.transformers.optimizer (model_type bert)"}
    try:
        from onnxruntime.transformers import optimizer

        fused = optimizer.optimize_model(
            str(src),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
            use_gpu=False,
        )
        stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    except Exception as exc:  # any optimizer failure: serve the unfused graph
        info.update(applied=False, fused_operators={}, reason=f"optimizer failed: {exc!r}")
        shutil.copyfile(src, dst)
        return info
    info["fused_operators"] = stats
    if stats.get("Attention", 0) != num_layers:
        info["applied"] = False
        info["reason"] = (
            f"{stats.get('Attention', 0)} of {num_layers} attention layers fused "
            f"(num_heads={num_heads}, hidden_size={hidden_size}): the unfused graph is used"
        )
        shutil.copyfile(src, dst)
        return info
    info["applied"] = True
    fused.save_model_to_file(str(dst))
    return info


def export_fp32(model: Any, serving_model: Any, path: Path) -> dict[str, Any]:
    """The fp32 graph of the cpu target at `path`: exported, then fused where possible.

    `model` is the MultiTaskBert (its BertConfig gives heads, width and depth); returns the
    export and fusion record the manifest keeps.
    """
    config = model.config
    with tempfile.TemporaryDirectory(prefix="streamer-export-") as tmp:
        unfused = Path(tmp) / "unfused.onnx"
        export_onnx(serving_model, unfused)
        fusion = fuse_bert(
            unfused,
            path,
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            num_layers=int(config.num_hidden_layers),
        )
    return {
        "export": f"torch.onnx TorchScript exporter, opset {OPSET}, eager attention",
        "fusion": fusion,
    }


def quantize_int8(
    fp32_path: Path, int8_path: Path, recipe: str = DEFAULT_INT8_RECIPE
) -> dict[str, Any]:
    """ORT dynamic quantization of MatMul/Gemm weights by a named recipe; returns the recipe.

    On the fused graph the recipes that quantize MatMul quantize the Attention ops too (their
    packed query/key/value weights are the unfused graph's first three MatMuls). Embeddings
    (Gather, EmbedLayerNormalization) stay fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if recipe not in INT8_RECIPES:
        raise ValueError(f"unknown int8 recipe {recipe!r}; choose from {sorted(INT8_RECIPES)}")
    options = INT8_RECIPES[recipe]
    layout, weights = weight_layout(fp32_path)
    roles = LAYER_LAYOUTS[layout]
    keep = set(options.get("fp32_roles", ()))
    if keep - set(LAYER_LAYOUTS["unfused"]):
        raise ValueError(f"recipe {recipe!r}: unknown layer roles {sorted(keep)}")
    if keep - set(roles):
        raise ValueError(f"recipe {recipe!r}: roles {sorted(keep)} are fused away in this graph")
    exclude = [n for i, n in enumerate(weights) if roles[i % len(roles)] in keep]
    ops = list(options.get("ops", ["MatMul", "Gemm"]))
    if layout == "fused" and "MatMul" in ops:
        ops.append("Attention")
    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        weight_type=getattr(QuantType, options["weight_type"]),
        per_channel=options["per_channel"],
        reduce_range=options["reduce_range"],
        op_types_to_quantize=ops,
        nodes_to_exclude=exclude,
        # The fused graph's contrib ops defeat ONNX shape inference; every float tensor here
        # is float32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return {
        "recipe": recipe,
        **options,
        "layout": layout,
        "ops_quantized": ops,
        "fp32_nodes": exclude,
    }


def weight_layout(onnx_path: Path) -> tuple[str, list[str]]:
    """("fused" | "unfused", the encoder's weight MatMuls in graph order); ValueError if the
    graph is neither layout of LAYER_LAYOUTS."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = weight_matmuls(onnx_path)
    attention = sum(n.op_type == "Attention" for n in graph.node)
    layout = "fused" if attention else "unfused"
    per_layer = len(LAYER_LAYOUTS[layout])
    layers = attention if attention else len(weights) // per_layer
    if not weights or len(weights) != layers * per_layer:
        raise ValueError(
            f"{onnx_path.name}: {len(weights)} weight MatMuls and {attention} Attention ops fit "
            f"neither BERT layout ({per_layer} weight MatMuls per layer "
            f"{LAYER_LAYOUTS[layout]} expected for the {layout} graph)"
        )
    return layout, weights


def weight_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes whose second input is a weight (an initializer), in graph order: the
    encoder's linear layers (`weight_layout` says how many per layer)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


# Operators worth a line in the manifest: what the fusions and the quantizer produced.
REPORTED_OPS = (
    "EmbedLayerNormalization", "Attention", "QAttention", "BiasGelu", "Gelu",
    "SkipLayerNormalization", "LayerNormalization", "MatMul", "DynamicQuantizeMatMul",
    "MatMulInteger", "Gemm",
)  # fmt: skip


def operator_counts(onnx_path: Path) -> dict[str, int]:
    """How many of each REPORTED_OPS operator the graph holds (absent ones left out)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node)
    return {op: counts[op] for op in REPORTED_OPS if counts[op]}


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
    graph = export_fp32(model, serving, out_dir / FP32_FILE)
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
        "graph": {**graph, "operators": operator_counts(out_dir / INT8_FILE)},
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
            "graph": {**graph, "operators": operator_counts(out_dir / FP32_FILE)},
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
