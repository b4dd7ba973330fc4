"""AWS Neuron backends: `neuron` (inf1, torch-neuron) and `neuronx` (inf2/trn1, torch-neuronx).

Written to the documented APIs (`torch.neuron.trace(model, example_inputs, compiler_args=...)`,
`torch_neuronx.trace(func, example_inputs, compiler_args=...)`, both saved with
`torch.jit.save` and loaded with `torch.jit.load` after importing the Neuron package). Neither
runtime exists on the development machines, so this path is UNVERIFIED: it only fails clearly
here. One TorchScript module is traced per (batch, seq_len) bucket, because Neuron graphs have
static shapes; the worker pins itself to one NeuronCore (NEURON_RT_VISIBLE_CORES).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from streamer.model.artifact import BackendUnavailableError
from streamer.model.buckets import choose_shape, pad_to_shape

PACKAGES = {"neuron": "torch_neuron", "neuronx": "torch_neuronx"}
PIP_NAMES = {"neuron": "torch-neuron", "neuronx": "torch-neuronx"}
NEURON_PIP_INDEX = "https://pip.repos.neuron.amazonaws.com"


def import_neuron(target: str) -> ModuleType:
    """Import torch-neuron / torch-neuronx lazily, or raise a clear BackendUnavailableError."""
    if target not in PACKAGES:
        raise ValueError(f"not a Neuron target: {target!r}")
    try:
        return importlib.import_module(PACKAGES[target])
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{PIP_NAMES[target]} is not installed; install from the AWS Neuron repository "
            f"(pip install {PIP_NAMES[target]} --extra-index-url={NEURON_PIP_INDEX}) on an "
            f"{'inf1' if target == 'neuron' else 'inf2/trn1'} instance with the Neuron SDK"
        ) from exc


def bucket_file(batch: int, seq_len: int) -> str:
    """File name of the module traced for one bucket."""
    return f"neuron/b{batch}_s{seq_len}.pt"


class NeuronForward:
    """Callable (ids, mask, types) -> (intent probs, dup prob) over per-bucket Neuron modules."""

    def __init__(self, artifact_dir: Path, target: str, shapes: list[tuple[int, int]]) -> None:
        import_neuron(target)  # registers the Neuron ops TorchScript needs to load the modules
        import torch

        self.torch = torch
        self.shapes = list(shapes)
        self.modules = {
            shape: torch.jit.load(str(Path(artifact_dir) / bucket_file(*shape)))
            for shape in self.shapes
        }

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pad to the smallest traced bucket, run it, slice the real rows."""
        b, s = input_ids.shape
        shape = choose_shape(self.shapes, b, s)
        padded = pad_to_shape(input_ids, attention_mask, token_type_ids, *shape)
        with self.torch.inference_mode():
            intent, dup = self.modules[shape](*(self.torch.from_numpy(a) for a in padded))
        return intent[:b].float().numpy(), dup[:b].float().numpy()
