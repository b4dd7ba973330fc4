"""The trained-artifact format: weights, tokenizer, label map and metadata in one directory.

```
<name>-<version>/
  model.safetensors   MultiTaskBert state dict (fp32, or fp16 for the shipped trained model)
  config.json         format, model name/version, backbone BertConfig, lengths, buckets,
                      duplicate threshold, serialization version
  labels.json         {"intent": [label, ...]}: the label set lives here, not in code
  tokenizer.json      the backbone's fast tokenizer
  MODEL_CARD.md       data, labels, metrics, limits (trained models)
  eval.json           held-out metrics (trained models)
```
Compiled serving artifacts (compile/) copy config.json, labels.json and tokenizer.json and add
a manifest.json with checksums; `streamer.model.runner` loads those.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamer.errors import ArtifactError, BackendUnavailableError
from streamer.model.buckets import DEFAULT_BUCKETS, Buckets
from streamer.model.tasks import Task

__all__ = ["ArtifactError", "BackendUnavailableError", "ModelMeta", "load_trained", "save_trained"]

TRAINED_FORMAT = "streamer-trained-v1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LABELS = "labels.json"
TOKENIZER = "tokenizer.json"
MODEL_CARD = "MODEL_CARD.md"
EVAL = "eval.json"


@dataclass(frozen=True)
class ModelMeta:
    """What serving needs to know about a model besides its weights: the one identity type.

    Read from config.json + labels.json of a trained or compiled artifact (`read_meta`). A
    served model also says which compiled target and variant run it (`served`).
    """

    name: str
    version: str
    labels: tuple[str, ...]
    duplicate_threshold: float = 0.5
    max_query_len: int = 32
    max_pair_len: int = 256
    serialization: str = "fields-v1"
    buckets: dict[Task, Buckets] = field(default_factory=lambda: dict(DEFAULT_BUCKETS))
    backbone: dict[str, Any] = field(default_factory=dict)
    target: str = ""  # compiled target (cpu, cuda, neuron, neuronx); "" for a trained artifact
    variant: str = ""  # the compiled variant that serves (int8, fp32, bfloat16, ...)

    def served(self, target: str, variant: str) -> ModelMeta:
        """The same model as served by one variant of a compiled target."""
        return replace(self, target=target, variant=variant)

    @property
    def full_name(self) -> str:
        """`<name>-<version>`, the artifact directory name."""
        return f"{self.name}-{self.version}"

    def config_json(self) -> dict[str, Any]:
        """config.json content (labels go to labels.json)."""
        return {
            "format": TRAINED_FORMAT,
            "name": self.name,
            "version": self.version,
            "num_intents": len(self.labels),
            "duplicate_threshold": self.duplicate_threshold,
            "max_query_len": self.max_query_len,
            "max_pair_len": self.max_pair_len,
            "serialization": self.serialization,
            "buckets": {t.name.lower(): b.to_json() for t, b in self.buckets.items()},
            "backbone": self.backbone,
        }


def write_labels(path: Path, labels: tuple[str, ...]) -> None:
    """Write the label map (index order is the model's output order)."""
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be unique and non-empty: {labels}")
    path.write_text(json.dumps({"intent": list(labels)}, indent=2) + "\n")


def read_labels(path: Path) -> tuple[str, ...]:
    """Read a label map written by `write_labels`."""
    try:
        labels = json.loads(path.read_text())["intent"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read label map {path}: {exc}") from exc
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f"label map {path} is not a list of strings")
    return tuple(labels)


def read_meta(artifact_dir: Path) -> ModelMeta:
    """Read config.json + labels.json of a trained or compiled artifact."""
    artifact_dir = Path(artifact_dir)
    try:
        cfg = json.loads((artifact_dir / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{artifact_dir} has no readable {CONFIG}: {exc}") from exc
    if cfg.get("format") != TRAINED_FORMAT:
        raise ArtifactError(f"{artifact_dir}/{CONFIG}: unknown format {cfg.get('format')!r}")
    labels = read_labels(artifact_dir / LABELS)
    if len(labels) != cfg["num_intents"]:
        raise ArtifactError(
            f"{artifact_dir}: {len(labels)} labels but {cfg['num_intents']} outputs"
        )
    return ModelMeta(
        name=cfg["name"],
        version=cfg["version"],
        labels=labels,
        duplicate_threshold=float(cfg["duplicate_threshold"]),
        max_query_len=int(cfg["max_query_len"]),
        max_pair_len=int(cfg["max_pair_len"]),
        serialization=cfg["serialization"],
        buckets={Task[k.upper()]: Buckets.from_json(v) for k, v in cfg["buckets"].items()},
        backbone=cfg["backbone"],
    )


def write_meta(out_dir: Path, meta: ModelMeta) -> None:
    """Write config.json and labels.json."""
    (out_dir / CONFIG).write_text(json.dumps(meta.config_json(), indent=2) + "\n")
    write_labels(out_dir / LABELS, meta.labels)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (weights are ~90 MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_trained(
    model: Any,
    out_dir: Path,
    meta: ModelMeta,
    tokenizer_json: Path,
    *,
    model_card: str | None = None,
    eval_metrics: dict[str, Any] | None = None,
    dtype: Any = None,
) -> Path:
    """Write a trained artifact directory for `model` (a MultiTaskBert).

    `dtype` (e.g. torch.float16) narrows the floating-point weights as stored; `load_trained`
    widens them back to fp32. None keeps the model's own dtype.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(out_dir / WEIGHTS), metadata={"format": TRAINED_FORMAT})
    write_meta(out_dir, meta)
    shutil.copyfile(tokenizer_json, out_dir / TOKENIZER)
    if model_card is not None:
        (out_dir / MODEL_CARD).write_text(model_card)
    if eval_metrics is not None:
        (out_dir / EVAL).write_text(json.dumps(eval_metrics, indent=2) + "\n")
    return out_dir


def load_trained(
    artifact_dir: Path, weights: str = WEIGHTS, *, keep_dtype: bool = False
) -> tuple[Any, ModelMeta]:
    """Load an artifact's weights into a MultiTaskBert in eval mode.

    Weights stored in fp16/bf16 (the shipped model, to keep the clone small) are widened to
    fp32 for computation unless `keep_dtype` (the cuda backend serves its bf16 file as is).
    """
    from safetensors.torch import load_file
    from transformers import BertConfig

    from streamer.model.network import MultiTaskBert  # lazy: torch is heavy

    artifact_dir = Path(artifact_dir)
    meta = read_meta(artifact_dir)
    config = BertConfig(**meta.backbone)
    config._attn_implementation = "sdpa"
    model = MultiTaskBert(config, len(meta.labels))
    try:
        state = load_file(str(artifact_dir / weights))
    except OSError as exc:
        raise ArtifactError(f"cannot read weights in {artifact_dir}: {exc}") from exc
    dtype = next(iter(state.values())).dtype
    if not keep_dtype:
        import torch

        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        dtype = torch.float32
    model.to(dtype).load_state_dict(state, strict=True)
    model.eval()
    return model, meta
