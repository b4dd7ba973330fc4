"""Parity of a served variant against the fp32 reference: one rule, at compile time and at start-up.

`compile/` runs its fixed parity sample through the fp32 PyTorch model and stores those serving
batches, with the reference outputs, in the artifact (`golden.npz`, checksummed like every
file). It then scores each variant with `check`. The loader runs the same `check` on the machine
that serves: int8 kernels differ by CPU (ONNX Runtime's u8s8 kernels can saturate on AVX2 and
AVX-512 without VNNI), so a variant that met the floor where it was compiled can miss it where
it runs, and only a check there says which.

`compare` is pure: given reference and candidate outputs it returns the verdict, so the gate's
logic is tested with fixed arrays, never with whatever kernels the test machine has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.model.tasks import Task

GOLDEN_FILE = "golden.npz"
# Floor for reduced-precision variants: intent labels and duplicate decisions that agree with fp32.
MIN_AGREEMENT = 0.99
# A reference score this close to the threshold has no stable decision (float precision); the
# threshold is itself a valid-split score, so the sample can hold the very pair that defines it.
TIE_EPS = 1e-5

# (input_ids, attention_mask, token_type_ids) int32 (B, L) -> (intent probs (B, K), dup (B, 1))
Forward = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class GoldenBatch:
    """One serving batch of the parity sample: padded inputs and the fp32 reference output."""

    task: Task
    input_ids: np.ndarray  # int32 (B, L), B and L a compiled bucket
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    expected: np.ndarray  # float32 (rows, K): the reference on the real rows (rows <= B)

    @property
    def rows(self) -> int:
        """Real rows (the rest are filler rows whose outputs are discarded)."""
        return int(self.expected.shape[0])


def save_golden(path: Path, batches: Sequence[GoldenBatch]) -> None:
    """Write the batches to one compressed npz (inputs are mostly padding zeros)."""
    arrays: dict[str, np.ndarray] = {}
    for i, b in enumerate(batches):
        arrays[f"{i}/task"] = np.asarray(int(b.task))
        arrays[f"{i}/input_ids"] = np.asarray(b.input_ids, np.int32)
        arrays[f"{i}/attention_mask"] = np.asarray(b.attention_mask, np.int32)
        arrays[f"{i}/token_type_ids"] = np.asarray(b.token_type_ids, np.int32)
        arrays[f"{i}/expected"] = np.asarray(b.expected, np.float32)
    with Path(path).open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def load_golden(path: Path) -> list[GoldenBatch]:
    """Read batches written by `save_golden`, in their order."""
    with np.load(Path(path)) as data:
        count = len({k.split("/")[0] for k in data.files})
        return [
            GoldenBatch(
                task=Task(int(data[f"{i}/task"])),
                input_ids=data[f"{i}/input_ids"],
                attention_mask=data[f"{i}/attention_mask"],
                token_type_ids=data[f"{i}/token_type_ids"],
                expected=data[f"{i}/expected"],
            )
            for i in range(count)
        ]


def run_batches(forward: Forward, batches: Sequence[GoldenBatch]) -> tuple[np.ndarray, np.ndarray]:
    """A forward's outputs on the batches: (intent probs (Nq, K), duplicate scores (Np, 1))."""
    intent: list[np.ndarray] = []
    dup: list[np.ndarray] = []
    for b in batches:
        arrays = (b.input_ids, b.attention_mask, b.token_type_ids)
        # A task-aware forward (int8 refined near decisions) is told which head counts.
        if getattr(forward, "task_aware", False):
            out = forward(*arrays, task=b.task)  # type: ignore[call-arg]
        else:
            out = forward(*arrays)
        if b.task == Task.INTENT:
            intent.append(np.asarray(out[0], np.float32)[: b.rows])
        else:
            dup.append(np.asarray(out[1], np.float32)[: b.rows])
    return _concat(intent), _concat(dup)


def expected_outputs(batches: Sequence[GoldenBatch]) -> tuple[np.ndarray, np.ndarray]:
    """The stored reference outputs in the same layout as `run_batches`."""
    return (
        _concat([b.expected for b in batches if b.task == Task.INTENT]),
        _concat([b.expected for b in batches if b.task == Task.DUPLICATE]),
    )


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 1), np.float32)


def compare(
    reference: tuple[np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray],
    threshold: float,
    *,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    """Max abs differences, label and decision agreement, and whether the floor is met."""
    ref_i, ref_d = reference
    cand_i, cand_d = candidate
    label_agree = float(np.mean(ref_i.argmax(-1) == cand_i.argmax(-1))) if len(ref_i) else 1.0
    ties = np.abs(ref_d - threshold) < TIE_EPS
    same = ((ref_d >= threshold) == (cand_d >= threshold)) | ties
    decision_agree = float(np.mean(same)) if len(ref_d) else 1.0
    return {
        "queries": len(ref_i),
        "pairs": len(ref_d),
        "intent_max_abs_diff": float(np.max(np.abs(ref_i - cand_i))) if len(ref_i) else 0.0,
        "intent_label_agreement": label_agree,
        "duplicate_max_abs_diff": float(np.max(np.abs(ref_d - cand_d))) if len(ref_d) else 0.0,
        "duplicate_decision_agreement": decision_agree,
        "duplicate_ties_at_threshold": int(ties.sum()),
        "min_agreement": min_agreement,
        "passed": bool(label_agree >= min_agreement and decision_agree >= min_agreement),
    }


def check(forward: Forward, batches: Sequence[GoldenBatch], threshold: float) -> dict[str, Any]:
    """Run `forward` on the golden batches here and compare with the stored reference."""
    return compare(expected_outputs(batches), run_batches(forward, batches), threshold)


def summary(report: dict[str, Any]) -> str:
    """One line for logs: agreement figures against the floor."""
    return (
        f"intent labels {report['intent_label_agreement']:.1%}, duplicate decisions "
        f"{report['duplicate_decision_agreement']:.1%} (floor {report['min_agreement']:.0%}, "
        f"{report['queries']} queries, {report['pairs']} pairs)"
    )
