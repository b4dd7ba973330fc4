"""Runtime loader: a compiled serving artifact -> a `Runner` with one `run` method.

`load_runner` verifies the manifest (checksums of every file, parity, target vs this host)
before it loads anything, then re-checks the chosen variant on this machine against the
artifact's golden outputs (`streamer.model.parity`): a default int8 variant that misses the
floor here is replaced by the manifest's fallback (fp32), and the runner says why. It fails with
`ArtifactError` (or its subclass `BackendUnavailableError`) saying what is wrong and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamer.model.artifact import ArtifactError, BackendUnavailableError, ModelMeta
from streamer.model.buckets import all_shapes
from streamer.model.hardware import cpu_description, flags_line
from streamer.model.manifest import read_manifest, served_meta, verify_checksums
from streamer.model.parity import Forward, check, load_golden, summary
from streamer.model.tasks import Task


class Runner:
    """Scores padded int32 token batches for either head of a compiled model."""

    def __init__(self, model: ModelMeta, forward: Forward, selection: str = "") -> None:
        self.model = model  # identity, labels, buckets, threshold; target and variant served
        self.selection = selection  # why this variant serves (the start-up parity verdict)
        self._forward = forward

    def describe(self) -> dict[str, str]:
        """Identity of what serves: model, version, target, variant and why (JSON-safe)."""
        m = self.model
        return {
            "model": m.name,
            "version": m.version,
            "target": m.target,
            "variant": m.variant,
            "selection": self.selection,
        }

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
        if getattr(self._forward, "task_aware", False):
            intent, dup = self._forward(*arrays, task=task)  # type: ignore[call-arg]
        else:
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


def _cuda_forward(artifact_dir: Path, manifest: dict[str, Any], variant: str) -> Forward:
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
    return GraphForward(serving, shapes, "cuda", use_graphs=info.get("cuda_graphs", True))


def _forward_for(
    artifact_dir: Path, manifest: dict[str, Any], variant: str, threads: int | None
) -> Forward:
    """The backend's forward for one variant of the artifact."""
    info = manifest["variants"][variant]
    target = manifest["target"]
    if target == "cpu":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                "onnxruntime is not installed (pip install onnxruntime)"
            ) from exc
        from streamer.model.backend_ort import OrtForward, RefinedForward

        refine = info.get("refine")
        if refine:
            return RefinedForward(
                artifact_dir / info["file"],
                artifact_dir / manifest["variants"][refine["exact_variant"]]["file"],
                threads,
                threshold=float(manifest["duplicate_threshold"]),
                duplicate_margin=float(refine["duplicate_margin"]),
                intent_gap=float(refine["intent_gap"]),
            )
        return OrtForward(artifact_dir / info["file"], threads)
    if target == "cuda":
        return _cuda_forward(artifact_dir, manifest, variant)
    from streamer.model.backend_neuron import NeuronForward

    meta = served_meta(artifact_dir, manifest, variant)
    return NeuronForward(artifact_dir, target, all_shapes(meta.buckets))


def load_runner(
    artifact_dir: str | Path,
    *,
    threads: int | None = None,
    force: bool = False,
    variant: str | None = None,
) -> Runner:
    """Verify and load a compiled artifact, checking its parity on this machine.

    `variant=None` serves the manifest's default if it meets the parity floor here, else the
    manifest's fallback variant (checked too). An explicitly requested variant that misses the
    floor (at compile time or here) is refused. `force` loads the variant without either check.
    `threads` bounds the CPU backend's intra-op pool.
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    verify_checksums(artifact_dir, manifest)
    candidates = [variant or manifest["default_variant"]]
    fallback = manifest.get("fallback_variant")
    if variant is None and fallback and fallback not in candidates:
        candidates.append(fallback)
    for name in candidates:
        if name not in manifest["variants"]:
            raise ArtifactError(
                f"{artifact_dir} has no variant {name!r}: {list(manifest['variants'])}"
            )
    golden = load_golden(artifact_dir / manifest["golden"]) if manifest.get("golden") else None
    threshold = float(manifest["duplicate_threshold"])
    misses: list[str] = []
    for name in candidates:
        if force:
            forward = _forward_for(artifact_dir, manifest, name, threads)
            return Runner(served_meta(artifact_dir, manifest, name), forward, "forced")
        check_parity(manifest, name, force)
        forward = _forward_for(artifact_dir, manifest, name, threads)
        if golden is None:
            return Runner(served_meta(artifact_dir, manifest, name), forward, "no golden set")
        report = check(forward, golden, threshold)
        if report["passed"]:
            verdict = f"{name} met the parity floor on this machine: {summary(report)}"
            return Runner(
                served_meta(artifact_dir, manifest, name), forward, "; ".join([*misses, verdict])
            )
        misses.append(
            f"{name} missed the parity floor on this machine "
            f"({flags_line(cpu_description())}): {summary(report)}"
        )
    raise ArtifactError(
        f"{artifact_dir}: no variant meets parity here: {'; '.join(misses)} "
        "(recompile on this machine, or pass force=True to load it anyway)"
    )
