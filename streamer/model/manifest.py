"""The serving-artifact manifest: what was compiled, for which target, checksums and parity.

`compile/` writes it; `streamer.model.runner` reads and verifies it before loading anything.
Every file of the artifact directory except manifest.json itself is listed with its sha256,
so a tampered, truncated or extra file is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamer.model.artifact import ArtifactError, ModelMeta, read_meta, sha256_file

MANIFEST = "manifest.json"
SERVING_FORMAT = "streamer-serving-v1"
TARGETS = ("cpu", "cuda", "neuron", "neuronx")
# How `compile/` builds each target, recorded in the manifest as "compile_recipe". A cached build
# of the shipped model (`streamer.model.shipped`) whose recipe differs is stale and rebuilt once,
# like one built from other weights: change the identifier whenever what a compile produces
# changes. cpu v2: TorchScript export with eager attention, ORT BERT fusions, then int8.
COMPILE_RECIPES: dict[str, str] = {
    "cpu": "cpu-ort-bert-fused-v2",
    "cuda": "cuda-v1",
    "neuron": "neuron-v1",
    "neuronx": "neuronx-v1",
}


def file_checksums(artifact_dir: Path) -> dict[str, str]:
    """sha256 of every file under the directory except the manifest, keyed by relative path."""
    artifact_dir = Path(artifact_dir)
    return {
        p.relative_to(artifact_dir).as_posix(): sha256_file(p)
        for p in sorted(artifact_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the checksums of the directory's files and write manifest.json; returns it."""
    manifest = dict(manifest)
    manifest["format"] = SERVING_FORMAT
    manifest["files"] = file_checksums(artifact_dir)
    (Path(artifact_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """Read manifest.json, refusing unknown formats and targets."""
    path = Path(artifact_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise ArtifactError(
            f"{artifact_dir} has no {MANIFEST}: it is not a compiled serving artifact "
            "(run `python -m compile --target cpu --artifact DIR` on a trained artifact)"
        ) from exc
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != SERVING_FORMAT:
        raise ArtifactError(f"{path}: unknown format {manifest.get('format')!r}")
    if manifest.get("target") not in TARGETS:
        raise ArtifactError(f"{path}: unknown target {manifest.get('target')!r}")
    return manifest


def verify_checksums(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise ArtifactError unless the directory holds exactly the listed files, unmodified."""
    expected: dict[str, str] = manifest.get("files", {})
    actual = file_checksums(artifact_dir)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    if missing or extra or changed:
        raise ArtifactError(
            f"{artifact_dir} does not match its manifest: "
            f"missing={missing} unexpected={extra} modified={changed}"
        )


def served_meta(
    artifact_dir: Path, manifest: dict[str, Any] | None = None, variant: str | None = None
) -> ModelMeta:
    """The model identity of a compiled artifact as one variant serves it (default: the
    manifest's default variant; the loader's start-up check may serve another)."""
    manifest = manifest if manifest is not None else read_manifest(artifact_dir)
    return read_meta(artifact_dir).served(
        manifest["target"], variant or manifest["default_variant"]
    )
