"""An EMULATED accelerator: answers a batch after the time a real device takes for its shape.

What decides a machine's rate is the host path (Kafka, decode, tokenize, batching, the shared-
memory hop, produce, commit), not the device: one H200 runs this model at 177,000 queries/s. To
measure the host alone on any machine, this backend replaces the model with a sleep of the
device's latency for the batch's (batch, seq_len) — a sleep uses no CPU, as a GPU kernel does not
use the host's — and returns outputs that are a deterministic function of the token ids (so
results can be checked end to end), not a model's. Latency tables are data in `emulation/`
(the H200 measured in `shared/anchors`; Inferentia2 from AWS's published bert-base figures).
Everything it serves says so: target `emulated-<profile>`, variant `emulated`, the runner's
selection line, the `device` result header and every report that uses it.

Shapes between table points: piecewise-linear in the batch size; between measured sequence
lengths, linear between the two curves; past the longest, the longest curve at the same number
of tokens (batch x seq_len / longest), i.e. attention's quadratic term is not modelled.
"""

from __future__ import annotations

import bisect
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from streamer.model.artifact import ModelMeta, read_meta
from streamer.model.tasks import Task

EMULATION_DIR = Path(__file__).resolve().parent / "emulation"
PROFILES = ("h200", "inf2")


@cache
def load_profile(profile: str) -> dict[str, Any]:
    """The profile's table: {"device", "source", "points": [{seq_len, batch, ms}, ...]}."""
    if profile not in PROFILES:
        raise ValueError(f"unknown emulation profile {profile!r}; choose from {PROFILES}")
    return dict(json.loads((EMULATION_DIR / f"{profile}.json").read_text()))


def _curve(points: list[tuple[int, float]], batch: int) -> float:
    """Piecewise-linear ms at `batch` over (batch, ms) points sorted by batch; linear beyond."""
    xs = [b for b, _ in points]
    if len(points) == 1:
        b0, ms0 = points[0]
        return ms0 * max(1.0, batch / b0)
    i = bisect.bisect_left(xs, batch)
    if i < len(xs) and xs[i] == batch:
        return points[i][1]
    lo, hi = (0, 1) if i == 0 else (len(xs) - 2, len(xs) - 1) if i >= len(xs) else (i - 1, i)
    (b0, m0), (b1, m1) = points[lo], points[hi]
    value = m0 + (m1 - m0) * (batch - b0) / (b1 - b0)
    return max(value, points[0][1])  # never below the smallest batch's latency


def latency_ms(profile: str, batch: int, seq_len: int) -> float:
    """Emulated device time for one (batch, seq_len) batch, in milliseconds."""
    if batch < 1 or seq_len < 1:
        raise ValueError(f"shape ({batch}, {seq_len}) is empty")
    table: dict[int, list[tuple[int, float]]] = {}
    for p in load_profile(profile)["points"]:
        table.setdefault(int(p["seq_len"]), []).append((int(p["batch"]), float(p["ms"])))
    for pts in table.values():
        pts.sort()
    lens = sorted(table)
    if seq_len in table:
        return _curve(table[seq_len], batch)
    if seq_len < lens[0]:
        return _curve(table[lens[0]], batch)
    if seq_len > lens[-1]:
        longest = lens[-1]
        return _curve(table[longest], max(1, round(batch * seq_len / longest)))
    i = bisect.bisect_left(lens, seq_len)
    l0, l1 = lens[i - 1], lens[i]
    m0, m1 = _curve(table[l0], batch), _curve(table[l1], batch)
    return m0 + (m1 - m0) * (seq_len - l0) / (l1 - l0)


def emulated_outputs(
    input_ids: np.ndarray, attention_mask: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (intent probs (B, K), duplicate prob (B, 1)) from the real tokens only."""
    ids = np.where(attention_mask > 0, input_ids, 0).astype(np.int64)
    weights = np.arange(1, ids.shape[1] + 1, dtype=np.int64) * 2654435761 % 1000003
    h = (ids * weights).sum(axis=1) % 1000003
    logits = np.stack([((h * (7919 * (j + 1))) % 1009) / 150.0 for j in range(n_labels)], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    dup = ((h * 31) % 1000).astype(np.float32)[:, None] / 1000.0
    return probs.astype(np.float32), dup


class EmulatedRunner:
    """The `Runner` interface over the emulated device (no model is loaded)."""

    def __init__(self, model: ModelMeta, profile: str) -> None:
        self.model = model
        self.profile = profile
        self._device = load_profile(profile)["device"]

    def describe(self) -> dict[str, str]:
        """Identity of what serves, labelled as emulation."""
        return {
            "model": self.model.name,
            "version": self.model.version,
            "target": self.model.target,
            "variant": self.model.variant,
            "selection": f"EMULATED {self._device}: no model runs; each batch sleeps the "
            "device's latency for its shape and answers a deterministic function of its tokens",
        }

    def run(
        self,
        task: Task,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ) -> np.ndarray:
        """Sleep the device time of this shape, then return deterministic outputs."""
        batch, seq_len = input_ids.shape
        time.sleep(latency_ms(self.profile, batch, seq_len) / 1000.0)
        intent, dup = emulated_outputs(input_ids, attention_mask, len(self.model.labels))
        return intent if Task(task) == Task.INTENT else dup


def emulated_meta(artifact_dir: Path, profile: str) -> ModelMeta:
    """The artifact's identity (labels, buckets, tokenizer settings) served by the emulator."""
    load_profile(profile)  # unknown profiles fail here, before any worker starts
    return read_meta(Path(artifact_dir)).served(f"emulated-{profile}", "emulated")


def load_emulated_runner(
    artifact_dir: str | Path, profile: str, threads: int | None = None
) -> EmulatedRunner:
    """Runner factory for a worker (`RunnerSpec`): the artifact's metadata, no weights."""
    return EmulatedRunner(emulated_meta(Path(artifact_dir), profile), profile)
