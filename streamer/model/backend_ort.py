"""ONNX Runtime backend (the `cpu` target): int8 dynamic-quantized or fp32 ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("intent_probs", "duplicate_prob")


def make_session(path: Path, threads: int | None = None) -> object:
    """An ORT CPU session; one intra-op pool of `threads` (a worker owns its cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle pool threads spin by default, burning the cores the event loop and the broker need
    # (measured: CPU per 1k events doubled with 2 spinning threads on a 2-core machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtForward:
    """Callable (ids, mask, types) -> (intent probs, duplicate prob) over one ORT session."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.session = make_session(path, threads)

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run both heads (the heads are tiny next to the backbone)."""
        feeds = dict(zip(INPUT_NAMES, (input_ids, attention_mask, token_type_ids), strict=True))
        intent, dup = self.session.run(list(OUTPUT_NAMES), feeds)  # type: ignore[attr-defined]
        return intent, dup
