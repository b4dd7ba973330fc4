"""ONNX Runtime backend (the `cpu` target): int8 dynamic-quantized or fp32 ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamer.model.tasks import Task

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


class RefinedForward:
    """int8 everywhere, fp32 again for the rows whose decision int8 could have flipped.

    Dynamic int8 moves a duplicate score by up to a few tenths on the pairs whose activations
    have outliers (measured per recipe by `compile.quant`); only the pairs whose int8 score lies
    within `duplicate_margin` of the threshold, and the queries whose two best intents lie
    within `intent_gap` of each other, can change decision, so only those rows run again on the
    fp32 graph (a sub-batch). The margins are set at compile time from the parity sample, and the
    parity check judges this forward as a whole, here and where it serves.
    """

    task_aware = True

    def __init__(
        self,
        int8_path: Path,
        fp32_path: Path,
        threads: int | None,
        *,
        threshold: float,
        duplicate_margin: float,
        intent_gap: float,
    ) -> None:
        self.fast = OrtForward(int8_path, threads)
        self.exact = OrtForward(fp32_path, threads)
        self.threshold = threshold
        self.duplicate_margin = duplicate_margin
        self.intent_gap = intent_gap
        self.rows_refined = 0
        self.rows_seen = 0

    def __call__(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        task: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both heads; rows near a decision of `task` (both tasks if None) re-run in fp32."""
        intent, dup = self.fast(input_ids, attention_mask, token_type_ids)
        near = np.zeros(len(input_ids), bool)
        if task is None or task == Task.DUPLICATE:
            near |= np.abs(dup[:, 0] - self.threshold) < self.duplicate_margin
        if task is None or task == Task.INTENT:
            top = np.sort(intent, axis=1)
            near |= (top[:, -1] - top[:, -2]) < self.intent_gap
        self.rows_seen += len(near)
        if near.any():
            rows = np.flatnonzero(near)
            self.rows_refined += len(rows)
            exact_intent, exact_dup = self.exact(
                input_ids[rows], attention_mask[rows], token_type_ids[rows]
            )
            intent, dup = intent.copy(), dup.copy()
            intent[rows], dup[rows] = exact_intent, exact_dup
        return intent, dup
