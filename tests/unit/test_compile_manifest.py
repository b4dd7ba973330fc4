"""The cpu manifest: required fields, a checksum per file, refusal of tampered artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.model.artifact import ArtifactError, sha256_file
from streamer.model.manifest import MANIFEST, read_manifest, verify_checksums
from streamer.model.runner import load_runner
from streamer.training.tiny import TINY_LABELS


def test_manifest_has_the_contract_fields(tiny_cpu_artifact: Path) -> None:
    m = read_manifest(tiny_cpu_artifact)
    assert m["target"] == "cpu"
    assert m["model"] == {"name": "tiny-multitask", "version": "v0"}
    assert m["labels"] == list(TINY_LABELS)
    assert set(m["buckets"]) == {"intent", "duplicate"}
    assert "token lengths" in m["bucket_rationale"]
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert {i["dtype"] for i in m["inputs"]} == {"int32"}
    assert set(m["variants"]) == {"int8", "fp32"}
    # int8 is the default where it met the floor on the compile machine (kernels differ by CPU).
    assert m["default_variant"] == ("int8" if m["variants"]["int8"]["parity"]["passed"] else "fp32")
    for info in m["variants"].values():
        for key in (
            "intent_max_abs_diff",
            "intent_label_agreement",
            "duplicate_max_abs_diff",
            "duplicate_decision_agreement",
            "passed",
        ):
            assert key in info["parity"]


def test_every_file_is_checksummed(tiny_cpu_artifact: Path) -> None:
    m = read_manifest(tiny_cpu_artifact)
    files = {p.name for p in tiny_cpu_artifact.iterdir() if p.name != MANIFEST}
    assert set(m["files"]) == files
    assert m["files"]["model.int8.onnx"] == sha256_file(tiny_cpu_artifact / "model.int8.onnx")
    verify_checksums(tiny_cpu_artifact, m)


def test_tampered_weights_are_refused(tiny_cpu_artifact: Path, copy_artifact) -> None:  # type: ignore[no-untyped-def]
    art = copy_artifact(tiny_cpu_artifact)
    with (art / "model.int8.onnx").open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match=r"modified=\['model.int8.onnx'\]"):
        load_runner(art)


def test_tampered_label_map_is_refused(tiny_cpu_artifact: Path, copy_artifact) -> None:  # type: ignore[no-untyped-def]
    art = copy_artifact(tiny_cpu_artifact)
    (art / "labels.json").write_text('{"intent": ["product", "media", "help", "other"]}\n')
    with pytest.raises(ArtifactError, match=r"labels\.json"):
        load_runner(art)


def test_missing_and_extra_files_are_refused(tiny_cpu_artifact: Path, copy_artifact) -> None:  # type: ignore[no-untyped-def]
    art = copy_artifact(tiny_cpu_artifact)
    (art / "model.fp32.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"missing=\['model.fp32.onnx'\]"):
        load_runner(art)
    art2 = copy_artifact(tiny_cpu_artifact)
    (art2 / "extra.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"unexpected=\['extra.bin'\]"):
        load_runner(art2)


def test_unknown_format_is_refused(tiny_cpu_artifact: Path, copy_artifact) -> None:  # type: ignore[no-untyped-def]
    art = copy_artifact(tiny_cpu_artifact)
    (art / MANIFEST).write_text('{"format": "something-else", "target": "cpu"}')
    with pytest.raises(ArtifactError, match="unknown format"):
        load_runner(art)


def test_a_cached_build_is_stale_when_the_compile_recipe_changes(
    tiny_artifact: Path,
    tiny_cpu_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json
    import shutil
    import subprocess

    from streamer.model import shipped
    from streamer.model.manifest import COMPILE_RECIPES, write_manifest

    assert read_manifest(tiny_cpu_artifact)["compile_recipe"] == COMPILE_RECIPES["cpu"]
    assert shipped.is_current(tiny_cpu_artifact, tiny_artifact)
    cached = shipped.compiled_dir(tiny_artifact, "cpu", tmp_path)
    compiles: list[list[str]] = []

    def fake_compile(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        compiles.append(cmd)  # stands in for `python -m compile`: the current recipe's build
        shutil.rmtree(cached)
        shutil.copytree(tiny_cpu_artifact, cached)
        return subprocess.CompletedProcess(cmd, 0, "wrote", "")

    monkeypatch.setattr(shipped.subprocess, "run", fake_compile)
    for recipe in ("cpu-older-recipe", None):  # another recipe; none (built before recipes)
        shutil.copytree(tiny_cpu_artifact, cached, dirs_exist_ok=True)
        manifest = json.loads((cached / MANIFEST).read_text())
        manifest.pop("compile_recipe")
        if recipe:
            manifest["compile_recipe"] = recipe
        write_manifest(cached, manifest)
        assert not shipped.is_current(cached, tiny_artifact)
        compiles.clear()
        assert shipped.ensure_compiled(tiny_artifact, "cpu", tmp_path, echo=False) == cached
        assert len(compiles) == 1 and "--out" in compiles[0]
        assert read_manifest(cached)["compile_recipe"] == COMPILE_RECIPES["cpu"]
        # Current now: the next start reuses it.
        assert shipped.ensure_compiled(tiny_artifact, "cpu", tmp_path, echo=False) == cached
        assert len(compiles) == 1
