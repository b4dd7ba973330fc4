"""`cuda` target: bf16/fp16 weights and a CUDA-graph capture plan, one graph per shape bucket.

The artifact holds the weights cast to the serving dtype and the list of shapes the runner
captures at load (`streamer.model.backend_cuda.GraphForward`). Parity is measured with that
same forward: on the GPU (graphs captured and replayed) when one is present at compile time,
else on the CPU in the same dtype without graphs, which the manifest states plainly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compile.common import base_manifest, prepare_out_dir
from compile.parity import golden_batches, torch_forward
from compile.sample import ParitySample
from streamer.model.artifact import ModelMeta, load_trained
from streamer.model.buckets import all_shapes
from streamer.model.manifest import write_manifest
from streamer.model.network import ServingModel
from streamer.model.parity import GOLDEN_FILE, check, save_golden
from streamer.model.tokenize import Encoder

# Minimum compute capability per dtype: bf16 tensor cores arrived with Ampere (8.0).
MIN_CAPABILITY = {"bfloat16": (8, 0), "float16": (7, 0), "float32": (6, 0)}


@dataclass(frozen=True)
class CudaPlan:
    """What the runner captures: dtype, the shapes (one CUDA graph each), hardware floor."""

    dtype: str
    shapes: list[tuple[int, int]]
    min_capability: tuple[int, int]
    weights_file: str

    @property
    def graph_count(self) -> int:
        """Number of CUDA graphs captured at load (one per shape)."""
        return len(self.shapes)


def plan_cuda(meta: ModelMeta, dtype: str = "bfloat16") -> CudaPlan:
    """The capture plan for a model's buckets in `dtype`."""
    if dtype not in MIN_CAPABILITY:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from {sorted(MIN_CAPABILITY)}")
    return CudaPlan(
        dtype, all_shapes(meta.buckets), MIN_CAPABILITY[dtype], f"model.{dtype}.safetensors"
    )


def compile_cuda(
    trained_dir: Path, out_dir: Path, sample: ParitySample, *, dtype: str = "bfloat16"
) -> dict[str, Any]:
    """Build the cuda serving artifact in `out_dir`; returns the manifest written."""
    import torch
    from safetensors.torch import save_file

    from streamer.model.backend_cuda import GraphForward, torch_dtype

    model, meta = load_trained(trained_dir)
    plan = plan_cuda(meta, dtype)
    reference_model = ServingModel(model).eval()
    prepare_out_dir(trained_dir, out_dir)
    golden = golden_batches(
        torch_forward(reference_model), Encoder.from_artifact(out_dir), meta, sample
    )
    save_golden(out_dir / GOLDEN_FILE, golden)

    cast = {
        k: v.detach().to(torch_dtype(dtype)).contiguous() for k, v in model.state_dict().items()
    }
    save_file(cast, str(out_dir / plan.weights_file), metadata={"dtype": dtype})
    served, _ = load_trained(out_dir, weights=plan.weights_file, keep_dtype=True)
    on_gpu = torch.cuda.is_available()
    forward = GraphForward(
        ServingModel(served), plan.shapes, "cuda" if on_gpu else "cpu", use_graphs=on_gpu
    )
    parity = check(forward, golden, meta.duplicate_threshold)
    parity["measured_on"] = (
        f"{torch.cuda.get_device_name()} with CUDA graphs"
        if on_gpu
        else f"CPU in {dtype} without graphs (no CUDA device at compile time; kernels unverified)"
    )
    manifest = base_manifest(meta, "cuda", sample.source, trained_dir)
    manifest["golden"] = GOLDEN_FILE
    manifest["variants"] = {
        dtype: {
            "file": plan.weights_file,
            "dtype": dtype,
            "graphs": [list(s) for s in plan.shapes],
            "cuda_graphs": True,
            "min_capability": list(plan.min_capability),
            "parity": parity,
        }
    }
    manifest["default_variant"] = dtype
    manifest["hardware"] = {
        "requires": f"NVIDIA GPU, compute capability >= {plan.min_capability[0]}.{plan.min_capability[1]}"
    }
    return write_manifest(out_dir, manifest)
