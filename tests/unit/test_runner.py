"""The runtime loader on the tiny cpu artifact: outputs, manifest, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamer.model.artifact import ArtifactError, BackendUnavailableError
from streamer.model.manifest import read_manifest, write_manifest
from streamer.model.runner import load_runner
from streamer.model.tasks import Task
from streamer.model.tokenize import Encoder
from streamer.training.tiny import TINY_LABELS, TINY_NAME, TINY_VERSION


def test_intent_returns_probabilities_per_label(tiny_cpu_artifact: Path) -> None:
    runner = load_runner(tiny_cpu_artifact, threads=1)
    batch = (
        Encoder.from_artifact(tiny_cpu_artifact)
        .encode_queries(["where is my order", "lamp"])
        .pad_rows(8)
    )
    out = runner.run(Task.INTENT, batch.input_ids, batch.attention_mask, batch.token_type_ids)
    assert out.shape == (8, len(TINY_LABELS)) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)


def test_duplicate_returns_one_probability(tiny_cpu_artifact: Path) -> None:
    runner = load_runner(tiny_cpu_artifact, threads=1)
    batch = Encoder.from_artifact(tiny_cpu_artifact).encode_pairs(["title a"], ["title b"])
    out = runner.run(
        int(Task.DUPLICATE), batch.input_ids, batch.attention_mask, batch.token_type_ids
    )  # type: ignore[arg-type]
    assert out.shape == (1, 1) and out.dtype == np.float32
    assert 0.0 <= float(out[0, 0]) <= 1.0


def test_manifest_exposes_labels_buckets_threshold_identity(tiny_cpu_artifact: Path) -> None:
    m = load_runner(tiny_cpu_artifact, threads=1).model
    assert m.labels == TINY_LABELS
    assert (m.name, m.version, m.target) == (TINY_NAME, TINY_VERSION, "cpu")
    assert m.variant in ("int8", "fp32")
    assert m.buckets[Task.INTENT].seq_lens == (16, 32)
    assert 0.0 < m.duplicate_threshold < 1.0


def test_int64_inputs_are_accepted_and_shapes_checked(tiny_cpu_artifact: Path) -> None:
    runner = load_runner(tiny_cpu_artifact, threads=1)
    ids = np.array([[101, 2000, 102, 0]], np.int64)
    mask = np.array([[1, 1, 1, 0]], np.int64)
    out = runner.run(Task.INTENT, ids, mask, np.zeros_like(ids))
    assert out.shape == (1, len(TINY_LABELS))
    with pytest.raises(ValueError, match="differ"):
        runner.run(Task.INTENT, ids, mask[:, :3], np.zeros_like(ids))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        runner.run(Task.INTENT, ids[0], mask[0], ids[0])


def test_both_variants_load_and_run(tiny_cpu_artifact: Path) -> None:
    batch = Encoder.from_artifact(tiny_cpu_artifact).encode_queries(
        ["tv", "refund my order", "a book"]
    )
    args = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    fp32 = load_runner(tiny_cpu_artifact, variant="fp32").run(Task.INTENT, *args)
    int8 = load_runner(tiny_cpu_artifact, variant="int8", force=True).run(Task.INTENT, *args)
    assert fp32.shape == int8.shape and np.isfinite(int8).all()


def test_not_a_compiled_artifact_is_refused(tiny_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="not a compiled serving artifact"):
        load_runner(tiny_artifact)


def test_unknown_variant_is_refused(tiny_cpu_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="no variant"):
        load_runner(tiny_cpu_artifact, variant="int4")


def test_failed_parity_is_refused_unless_forced(tiny_cpu_artifact: Path, copy_artifact) -> None:  # type: ignore[no-untyped-def]
    art = copy_artifact(tiny_cpu_artifact)
    manifest = read_manifest(art)
    manifest["variants"]["int8"]["parity"]["passed"] = False
    manifest["variants"]["int8"]["parity"]["intent_label_agreement"] = 0.9
    write_manifest(art, manifest)
    manifest["default_variant"] = "fp32"
    write_manifest(art, manifest)
    with pytest.raises(ArtifactError, match=r"did not meet parity.*variant='fp32'"):
        load_runner(art, variant="int8")
    assert load_runner(art, variant="int8", force=True).model.variant == "int8"
    assert load_runner(art).model.variant == "fp32"
    assert load_runner(art, variant="fp32").model.variant == "fp32"


def test_neuron_manifest_on_this_host_fails_clearly(tiny_cpu_artifact: Path, copy_artifact) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    try:
        import torch_neuron  # type: ignore[import-not-found]  # noqa: F401

        pytest.skip("torch-neuron is installed here")
    except ImportError:
        pass
    art = copy_artifact(tiny_cpu_artifact)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["target"] = "neuron"
    write_manifest(art, manifest)
    with pytest.raises(
        BackendUnavailableError,
        match="torch-neuron is not installed; install from the AWS Neuron repository",
    ):
        load_runner(art)


@pytest.fixture(scope="module")
def wrong_int8_artifact(tiny_cpu_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact whose int8 file is another model: it misses parity on any machine."""
    import shutil

    from compile.cpu import INT8_FILE, export_onnx
    from streamer.model.artifact import load_trained
    from streamer.model.network import ServingModel
    from streamer.training.tiny import build_tiny_artifact

    root = tmp_path_factory.mktemp("wrong-int8")
    other, _ = load_trained(build_tiny_artifact(root / "other", seed=1))
    art = root / tiny_cpu_artifact.name
    shutil.copytree(tiny_cpu_artifact, art)
    export_onnx(ServingModel(other).eval(), art / INT8_FILE)
    manifest = read_manifest(art)
    manifest["default_variant"] = "int8"  # as compiled on a machine where int8 passed
    manifest["variants"]["int8"]["parity"]["passed"] = True
    write_manifest(art, manifest)
    return art


def test_startup_check_serves_fp32_where_int8_misses_parity_here(wrong_int8_artifact: Path) -> None:
    runner = load_runner(wrong_int8_artifact, threads=1)
    assert runner.model.variant == "fp32"
    assert "int8 missed the parity floor on this machine" in runner.selection
    assert "fp32 met the parity floor on this machine" in runner.selection
    assert runner.describe()["variant"] == "fp32"


def test_startup_check_refuses_an_explicit_variant_that_misses_here(
    wrong_int8_artifact: Path,
) -> None:
    with pytest.raises(ArtifactError, match="int8 missed the parity floor on this machine"):
        load_runner(wrong_int8_artifact, variant="int8", threads=1)
    forced = load_runner(wrong_int8_artifact, variant="int8", force=True, threads=1)
    assert forced.model.variant == "int8" and forced.selection == "forced"


def test_startup_check_keeps_a_variant_that_passes_here(tiny_cpu_artifact: Path) -> None:
    runner = load_runner(tiny_cpu_artifact, variant="fp32", threads=1)
    assert runner.selection.startswith("fp32 met the parity floor on this machine")


def test_startup_verdict_reaches_the_service_metric(wrong_int8_artifact: Path) -> None:
    import asyncio

    from streamer.pipeline.executor import InProcessExecutor, RunnerSpec
    from streamer.pipeline.metrics import Metrics

    async def served() -> dict[str, str]:
        executor = InProcessExecutor(
            RunnerSpec(
                "streamer.model.runner:load_runner",
                {"artifact_dir": str(wrong_int8_artifact), "threads": 1},
            )
        )
        await executor.start()
        try:
            return executor.runner_info
        finally:
            await executor.close()

    info = asyncio.run(served())
    metrics = Metrics()
    metrics.set_model(info)
    text = metrics.render().decode()
    assert (
        'streamer_model_info{model="tiny-multitask",target="cpu",variant="fp32",version="v0"} 1.0'
        in text
    )
