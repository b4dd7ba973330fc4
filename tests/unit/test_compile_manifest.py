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
