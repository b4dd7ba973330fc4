"""Steps every target shares: output directory, copied metadata, base manifest fields."""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path
from typing import Any

from streamer.model.artifact import (
    CONFIG,
    EVAL,
    LABELS,
    MODEL_CARD,
    TOKENIZER,
    WEIGHTS,
    ArtifactError,
    ModelMeta,
    sha256_file,
)
from streamer.model.buckets import Buckets
from streamer.model.hardware import cpu_description
from streamer.model.manifest import COMPILE_RECIPES, MANIFEST
from streamer.model.tasks import Task

INPUTS = [
    {"name": "input_ids", "dtype": "int32", "shape": ["batch", "seq_len"]},
    {"name": "attention_mask", "dtype": "int32", "shape": ["batch", "seq_len"]},
    {"name": "token_type_ids", "dtype": "int32", "shape": ["batch", "seq_len"]},
]

BUCKET_RATIONALE = (
    "Sequence buckets follow the training data's token lengths (this tokenizer and "
    "serialization): search queries have median 6-12 and p99 13-21 tokens, so 16 holds nearly "
    "all real queries and 32 the long help sentences; product pairs: Amazon-Google p99 61 "
    "(64), Walmart-Amazon median 69 / p99 111 (128), Abt-Buy median 117 / p99 210 (256, "
    "longer pairs truncated longest-first). Batch buckets: 1 for the idle real-time path, "
    "8/32 for micro-batches, 128 for query bursts; pairs stop at 32 x 256 to bound latency."
)


def default_out_dir(trained_dir: Path, target: str) -> Path:
    """`<trained>-<target>` next to the trained artifact (what `make compile-cpu` expects)."""
    trained_dir = Path(trained_dir)
    return trained_dir.parent / f"{trained_dir.name.rstrip('/')}-{target}"


def prepare_out_dir(trained_dir: Path, out_dir: Path) -> None:
    """Create a clean output directory with the trained artifact's metadata files copied in."""
    trained_dir, out_dir = Path(trained_dir), Path(out_dir)
    if out_dir.resolve() == trained_dir.resolve():
        raise ArtifactError("the output directory must differ from the trained artifact")
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
            raise ArtifactError(f"{out_dir} exists, is not empty and is not a compiled artifact")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name in (CONFIG, LABELS, TOKENIZER, MODEL_CARD, EVAL):
        if (trained_dir / name).exists():
            shutil.copyfile(trained_dir / name, out_dir / name)


def base_manifest(
    meta: ModelMeta, target: str, sample_source: str, trained_dir: Path
) -> dict[str, Any]:
    """Manifest fields common to every target (variants and files are added per target)."""
    import torch

    buckets: dict[Task, Buckets] = meta.buckets
    return {
        "target": target,
        # How it was built: a cached build made by another recipe is stale (shipped.is_current).
        "compile_recipe": COMPILE_RECIPES[target],
        "model": {"name": meta.name, "version": meta.version},
        "model_name": meta.name,
        "model_version": meta.version,
        "labels": list(meta.labels),
        "duplicate_threshold": meta.duplicate_threshold,
        "serialization": meta.serialization,
        "max_query_len": meta.max_query_len,
        "max_pair_len": meta.max_pair_len,
        "buckets": {t.name.lower(): b.to_json() for t, b in buckets.items()},
        "bucket_rationale": BUCKET_RATIONALE,
        "inputs": INPUTS,
        "outputs": [
            {"name": "intent_probs", "dtype": "float32", "shape": ["batch", len(meta.labels)]},
            {"name": "duplicate_prob", "dtype": "float32", "shape": ["batch", 1]},
        ],
        "parity_sample": sample_source,
        # What it was built from: a cached build of the shipped model is stale when this differs.
        "source": {
            "trained": Path(trained_dir).name,
            "weights_sha256": sha256_file(Path(trained_dir) / WEIGHTS),
        },
        "built": {
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(),
            "torch": torch.__version__,
            # int8 results depend on these (the loader re-checks parity where it serves).
            "cpu": cpu_description(),
        },
    }
