"""The emulated accelerator: latency table lookup, deterministic outputs, labelling everywhere."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from streamer.model.backend_emulated import (
    PROFILES,
    emulated_outputs,
    latency_ms,
    load_emulated_runner,
    load_profile,
)
from streamer.model.tasks import Task


def test_measured_shapes_come_straight_from_the_anchor_table() -> None:
    assert latency_ms("h200", 1, 16) == pytest.approx(0.291)
    assert latency_ms("h200", 128, 16) == pytest.approx(0.723)
    assert latency_ms("h200", 32, 128) == pytest.approx(0.693)
    assert latency_ms("inf2", 1, 128) == pytest.approx(1.0)


def test_between_and_beyond_the_table() -> None:
    # batch 4 at L=16 lies between the measured batches 1 and 8
    assert 0.291 < latency_ms("h200", 4, 16) < 0.31
    # L=32 lies between the L=16 and L=128 curves
    assert latency_ms("h200", 32, 16) < latency_ms("h200", 32, 32) < latency_ms("h200", 32, 128)
    # L=256 is the L=128 curve at the same token count: 32 x 256 = 64 x 128
    assert latency_ms("h200", 32, 256) == pytest.approx(latency_ms("h200", 64, 128))
    # never below the smallest batch, and monotone in the batch
    sizes = [1, 2, 8, 9, 32, 100, 128, 4096]
    for profile in PROFILES:
        times = [latency_ms(profile, b, 128) for b in sizes]
        assert times == sorted(times) and times[0] > 0
    with pytest.raises(ValueError, match="unknown emulation profile"):
        latency_ms("tpu", 1, 16)
    with pytest.raises(ValueError, match="empty"):
        latency_ms("h200", 0, 16)


def test_outputs_are_a_deterministic_function_of_the_real_tokens() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(1000, 30000, (6, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, 10:] = 0
    intent, dup = emulated_outputs(ids, mask, 4)
    again, dup2 = emulated_outputs(ids.copy(), mask, 4)
    np.testing.assert_array_equal(intent, again)
    np.testing.assert_array_equal(dup, dup2)
    np.testing.assert_allclose(intent.sum(axis=1), 1.0, atol=1e-5)
    assert intent.shape == (6, 4) and dup.shape == (6, 1) and ((dup >= 0) & (dup < 1)).all()
    padded = ids.copy()
    padded[:, 10:] = 7  # padding positions do not change the answer
    np.testing.assert_array_equal(emulated_outputs(padded, mask, 4)[0], intent)
    assert len({tuple(r) for r in np.round(intent, 4)}) > 1  # not one constant answer


def test_the_runner_sleeps_the_device_time_and_says_it_is_emulated(
    tiny_cpu_artifact: Path,
) -> None:
    runner = load_emulated_runner(tiny_cpu_artifact, "inf2")
    info = runner.describe()
    assert info["target"] == "emulated-inf2" and info["variant"] == "emulated"
    assert info["selection"].startswith("EMULATED")
    ids = np.full((8, 128), 1000, np.int32)
    t0 = time.perf_counter()
    out = runner.run(Task.DUPLICATE, ids, np.ones_like(ids), np.zeros_like(ids))
    assert time.perf_counter() - t0 >= latency_ms("inf2", 8, 128) / 1000.0
    assert out.shape == (8, 1)
    assert "source" in load_profile("h200") and "device" in load_profile("inf2")
