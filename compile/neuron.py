"""`neuron` (inf1, torch-neuron) and `neuronx` (inf2/trn1, torch-neuronx) targets. UNVERIFIED.

Written to the documented APIs: `torch_neuron.trace(model, example_inputs, compiler_args=[...])`
(imported as `torch.neuron` once torch_neuron is imported) and
`torch_neuronx.trace(func, example_inputs, compiler_args=[...])`; the traced modules are
TorchScript, saved with `torch.jit.save`. One module per (batch, seq_len) bucket, for one
NeuronCore each (no pipelining), as Amazon Search did. Neither SDK can be installed on the
development machines, so here both targets stop at once with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compile.common import base_manifest, prepare_out_dir
from compile.parity import golden_batches, torch_forward
from compile.sample import ParitySample
from streamer.model.artifact import load_trained
from streamer.model.backend_neuron import NeuronForward, bucket_file, import_neuron
from streamer.model.buckets import all_shapes, pad_to_shape
from streamer.model.manifest import write_manifest
from streamer.model.network import ServingModel
from streamer.model.parity import GOLDEN_FILE, check, save_golden
from streamer.model.tokenize import Encoder
from streamer.model.vocab import CLS_ID, SEP_ID

# inf1: matmuls in bf16 with fp32 accumulation (`--fp32-cast=all` casts every fp32 op), no
# pipelining across NeuronCores. inf2/trn1: neuronx-cc auto-casts matmuls to bf16.
COMPILER_ARGS: dict[str, list[str]] = {
    "neuron": ["--fp32-cast=all", "--neuroncore-pipeline-cores", "1"],
    "neuronx": ["--auto-cast", "matmult", "--auto-cast-type", "bf16"],
}


def compile_neuron(
    trained_dir: Path, out_dir: Path, sample: ParitySample, *, target: str
) -> dict[str, Any]:
    """Trace one Neuron module per bucket into `out_dir`; returns the manifest written."""
    neuron = import_neuron(target)  # fails first, before any work, where the SDK is absent
    import torch

    model, meta = load_trained(trained_dir)
    serving = ServingModel(model).eval()
    prepare_out_dir(trained_dir, out_dir)
    (out_dir / "neuron").mkdir()
    shapes = all_shapes(meta.buckets)
    files = []
    for batch, seq_len in shapes:
        example = [
            torch.from_numpy(a)
            for a in pad_to_shape(
                np.array([[CLS_ID, SEP_ID]], np.int32),
                np.ones((1, 2), np.int32),
                np.zeros((1, 2), np.int32),
                batch,
                seq_len,
            )
        ]
        traced = neuron.trace(serving, example_inputs=example, compiler_args=COMPILER_ARGS[target])
        torch.jit.save(traced, str(out_dir / bucket_file(batch, seq_len)))
        files.append(bucket_file(batch, seq_len))
    golden = golden_batches(torch_forward(serving), Encoder.from_artifact(out_dir), meta, sample)
    save_golden(out_dir / GOLDEN_FILE, golden)
    manifest = base_manifest(meta, target, sample.source, trained_dir)
    manifest["variants"] = {
        "bf16-cast": {
            "files": files,
            "graphs": [list(s) for s in shapes],
            "compiler_args": COMPILER_ARGS[target],
            "parity": check(
                NeuronForward(out_dir, target, shapes), golden, meta.duplicate_threshold
            ),
        }
    }
    manifest["default_variant"] = "bf16-cast"
    manifest["golden"] = GOLDEN_FILE
    manifest["hardware"] = {
        "requires": "inf1 NeuronCore (torch-neuron)"
        if target == "neuron"
        else "inf2/trn1 NeuronCore-v2 (torch-neuronx)",
        "verified": False,
    }
    return write_manifest(out_dir, manifest)
