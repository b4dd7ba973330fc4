"""Training recipe logic: LR schedule, batch plan, fp16 weights (no data, no pretrained model)."""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from streamer.model.tasks import Task
from streamer.training.train import add_arguments, build_schedule, lr_factor


def _args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_defaults_are_the_make_model_recipe() -> None:
    args = _args()
    assert args.version == "v4"
    assert args.freeze_layers == 0
    assert args.save_dtype == "float16"
    assert args.serialization == "fields-v2"
    assert args.media_spans is False


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_factor_warms_up_then_decays_to_zero(schedule: str) -> None:
    assert lr_factor(0.0, 0.1, schedule) == 0.0
    assert lr_factor(0.05, 0.1, schedule) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, schedule) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1, schedule) == pytest.approx(0.0)
    later = [lr_factor(p, 0.1, schedule) for p in np.linspace(0.1, 1.0, 50)]
    assert all(a >= b for a, b in itertools.pairwise(later))
    assert lr_factor(0.55, 0.1, "linear") == pytest.approx(0.5)
    assert lr_factor(0.55, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(0.3, 0.1, "cosine") > lr_factor(0.3, 0.1, "linear")


def _plan(seed: int = 0, **overrides: object) -> tuple[list[tuple[Task, list[int]]], np.ndarray]:
    args = _args(epochs=3, negative_share=0.5, intent_passes=2.0, media_oversample=3)
    for key, value in overrides.items():
        setattr(args, key, value)
    pair_y = np.array([1] * 10 + [0] * 90, np.float32)
    factor = 2 if args.swap_prob > 0 else 1
    pair_lengths = np.tile(np.arange(100) % 17 + 5, factor).astype(np.int32)
    intent_y = [0] * 40 + [1] * 5
    intent_lengths = (np.arange(45) % 7 + 3).astype(np.int32)
    schedule = build_schedule(
        intent_y,
        pair_y,
        intent_lengths,
        pair_lengths,
        list(range(40, 45)),
        args,
        random.Random(seed),
    )
    return schedule, pair_y


def _rows(schedule: list[tuple[Task, list[int]]], task: Task) -> list[int]:
    return [r for t, rows in schedule if t == task for r in rows]


def test_schedule_is_a_pure_function_of_the_seed() -> None:
    assert _plan(1)[0] == _plan(1)[0]
    assert _plan(1)[0] != _plan(2)[0]


def test_every_epoch_sees_all_positives_and_the_negatives_rotate() -> None:
    schedule, pair_y = _plan()
    rows = _rows(schedule, Task.DUPLICATE)
    positives = [r for r in rows if pair_y[r] == 1]
    negatives = [r for r in rows if pair_y[r] == 0]
    assert sorted(set(positives)) == list(range(10)) and len(positives) == 30
    assert len(negatives) == 3 * 45  # half of the 90 negatives per epoch
    assert set(negatives) == set(range(10, 100))  # 1.5 passes: every negative at least once
    intents = _rows(schedule, Task.INTENT)
    # two passes over 40 + 3 x 5 media rows
    assert len(intents) == pytest.approx(2 * 55, abs=3)
    assert sum(r >= 40 for r in intents) == pytest.approx(2 * 15, abs=6)


def test_swapped_pairs_index_the_second_copy() -> None:
    schedule, pair_y = _plan(swap_prob=0.5)
    rows = _rows(schedule, Task.DUPLICATE)
    swapped = [r for r in rows if r >= len(pair_y)]
    assert 0.3 < len(swapped) / len(rows) < 0.7
    assert sorted({r % len(pair_y) for r in rows if pair_y[r % len(pair_y)] == 1}) == list(
        range(10)
    )


def test_intent_only_plan_has_no_pair_batches() -> None:
    schedule, _ = _plan(tasks="intent")
    assert {t for t, _ in schedule} == {Task.INTENT}


def test_fp16_weights_are_stored_narrow_and_load_as_fp32(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from streamer.model.artifact import load_trained, read_meta, save_trained
    from streamer.training.tiny import build_tiny_artifact

    tiny = build_tiny_artifact(tmp_path / "tiny")
    model, meta = load_trained(tiny)
    out = save_trained(model, tmp_path / "half", meta, tiny / "tokenizer.json", dtype=torch.float16)
    stored = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    reloaded, meta2 = load_trained(out)
    assert meta2 == read_meta(tiny)
    for name, value in reloaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, model.state_dict()[name].half().float())


def test_thread_tuner_measures_both_then_keeps_the_faster_and_probes_less_when_far() -> None:
    import torch

    from streamer.training.train import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2, window=40, probe=4)
        assert tuner.current == 2
        tuner.close_window(100.0)  # probe of 2 threads
        assert tuner.current == 1
        tuner.close_window(800.0)  # probe of 1 thread: much faster
        assert tuner.current == 1 and tuner._length == 40
        seen = []
        for _ in range(12):
            tuner.close_window(800.0 if tuner.current == 1 else 100.0)
            seen.append(tuner.current)
        # the slow count is probed ever more rarely: after 2 windows, then after 4, ...
        probes = [i for i, c in enumerate(seen) if c == 2]
        assert probes and all(b - a > 2 for a, b in itertools.pairwise(probes))
        # when the other count becomes faster, the next probe finds it and it takes over
        for _ in range(20):
            tuner.close_window(800.0 if tuner.current == 1 else 1500.0)
        assert tuner.current == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_thread_tuner_fixed_never_switches() -> None:
    import torch

    from streamer.training.train import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2, fixed=1)
        for rate in (1.0, 1000.0, 5.0):
            tuner.close_window(rate)
            assert tuner.current == 1
    finally:
        torch.set_num_threads(before)
