"""Runtime loader: a compiled serving artifact -> a `Runner` with one `run` method.

`load_runner` verifies the manifest (checksums of every file, parity, target vs this host)
before it loads anything, and fails with `ArtifactError` (or its subclass
`BackendUnavailableError`) saying what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamer.model.artifact import ArtifactError, BackendUnavailableError
from streamer.model.buckets import Buckets, all_shapes
from streamer.model.manifest import read_manifest, verify_checksums
from streamer.model.tasks import Task

Forward = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class RunnerManifest:
    """What callers need from the manifest: labels, buckets, threshold, model identity."""

    name: str
    version: str
    target: str
    variant: str
    labels: tuple[str, ...]
    buckets: dict[Task, Buckets]
    duplicate_threshold: float
    max_query_len: int
    max_pair_len: int
    serialization: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], variant: str) -> RunnerManifest:
        """Build from a parsed manifest.json."""
        return cls(
            name=manifest["model"]["name"],
            version=manifest["model"]["version"],
            target=manifest["target"],
            variant=variant,
            labels=tuple(manifest["labels"]),
            buckets={Task[k.upper()]: Buckets.from_json(v) for k, v in manifest["buckets"].items()},
            duplicate_threshold=float(manifest["duplicate_threshold"]),
            max_query_len=int(manifest["max_query_len"]),
            max_pair_len=int(manifest["max_pair_len"]),
            serialization=manifest["serialization"],
            raw=manifest,
        )


class Runner:
    """Scores padded int32 token batches for either head of a compiled model."""

    def __init__(self, manifest: RunnerManifest, forward: Forward) -> None:
        self.manifest = manifest
        self._forward = forward

    def run(
        self,
        task: Task,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ) -> np.ndarray:
        """int32 (B, L) inputs -> float32 (B, K): intent probabilities, or (B, 1) duplicate."""
        task = Task(task)
        arrays = [
            np.ascontiguousarray(a, dtype=np.int32)
            for a in (input_ids, attention_mask, token_type_ids)
        ]
        shape = arrays[0].shape
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"expected non-empty (B, L) arrays, got shape {shape}")
        if any(a.shape != shape for a in arrays):
            raise ValueError(f"input shapes differ: {[a.shape for a in arrays]}")
        intent, dup = self._forward(*arrays)
        out = intent if task == Task.INTENT else dup
        return np.ascontiguousarray(out, dtype=np.float32)


def check_parity(manifest: dict[str, Any], variant: str, force: bool) -> None:
    """Refuse a variant whose parity figures missed the floor, unless forced."""
    parity = manifest["variants"][variant].get("parity", {})
    if parity.get("passed") or force:
        return
    others = [v for v, info in manifest["variants"].items() if info.get("parity", {}).get("passed")]
    hint = f"; load variant={others[0]!r} instead" if others else ""
    raise ArtifactError(
        f"variant {variant!r} of {manifest['model']['name']}-{manifest['model']['version']} did "
        f"not meet parity (intent label agreement {parity.get('intent_label_agreement')}, "
        f"duplicate decision agreement {parity.get('duplicate_decision_agreement')}, floor "
        f"{parity.get('min_agreement')}); pass force=True to load it anyway{hint}"
    )


GOLDEN_MAX_ABS_DIFF = 0.05


def check_golden(forward: Forward, golden: dict[str, Any], threshold: float) -> dict[str, float]:
    """Re-run the manifest's golden inputs; raise ArtifactError if labels or decisions differ.

    Returns the max abs differences seen, for logging.
    """
    diffs = {}
    for name, head in (("intent", 0), ("duplicate", 1)):
        case = golden[name]
        arrays = [
            np.asarray(case[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")
        ]
        expected = np.asarray(case["expected"], np.float32)
        got = forward(*arrays)[head]
        diff = float(np.max(np.abs(got - expected)))
        same = (
            np.array_equal(got.argmax(-1), expected.argmax(-1))
            if name == "intent"
            else np.array_equal(got >= threshold, expected >= threshold)
        )
        if not same or diff > GOLDEN_MAX_ABS_DIFF:
            raise ArtifactError(
                f"the {name} head on this device disagrees with the fp32 reference on the "
                f"manifest's golden inputs (max abs diff {diff:.4f}, same decisions: {same})"
            )
        diffs[name] = diff
    return diffs


def _cuda_forward(
    artifact_dir: Path, manifest: dict[str, Any], variant: str, force: bool
) -> Forward:
    import torch

    from streamer.model.artifact import load_trained
    from streamer.model.backend_cuda import GraphForward, torch_dtype
    from streamer.model.network import ServingModel

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"{artifact_dir} is a cuda artifact but this host has no CUDA device "
            "(torch.cuda.is_available() is False); compile for --target cpu instead"
        )
    info = manifest["variants"][variant]
    need = tuple(info.get("min_capability", (0, 0)))
    have = torch.cuda.get_device_capability()
    if have < need:
        raise BackendUnavailableError(
            f"{info['dtype']} needs CUDA compute capability >= {need}, this GPU has {have}"
        )
    model, _ = load_trained(artifact_dir, weights=info["file"], keep_dtype=True)
    serving = ServingModel(model).to(torch_dtype(info["dtype"]))
    shapes = [tuple(s) for s in info["graphs"]]
    forward = GraphForward(serving, shapes, "cuda", use_graphs=info.get("cuda_graphs", True))
    if "golden" in manifest and not force:
        check_golden(forward, manifest["golden"], float(manifest["duplicate_threshold"]))
    return forward


def load_runner(
    artifact_dir: str | Path,
    *,
    threads: int | None = None,
    force: bool = False,
    variant: str | None = None,
) -> Runner:
    """Verify and load a compiled artifact; `threads` bounds the CPU backend's intra-op pool."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    verify_checksums(artifact_dir, manifest)
    variant = variant or manifest["default_variant"]
    if variant not in manifest["variants"]:
        raise ArtifactError(
            f"{artifact_dir} has no variant {variant!r}: {list(manifest['variants'])}"
        )
    check_parity(manifest, variant, force)
    info = manifest["variants"][variant]
    target = manifest["target"]
    forward: Forward
    if target == "cpu":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                "onnxruntime is not installed (pip install onnxruntime)"
            ) from exc
        from streamer.model.backend_ort import OrtForward

        forward = OrtForward(artifact_dir / info["file"], threads)
    elif target == "cuda":
        forward = _cuda_forward(artifact_dir, manifest, variant, force)
    else:
        from streamer.model.backend_neuron import NeuronForward

        meta = RunnerManifest.from_manifest(manifest, variant)
        forward = NeuronForward(artifact_dir, target, all_shapes(meta.buckets))
    return Runner(RunnerManifest.from_manifest(manifest, variant), forward)
