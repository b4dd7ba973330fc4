"""Per-target batch policies and worker layout chosen by the composition root."""

from __future__ import annotations

import pytest

from streamer.app import batch_policies, worker_layout
from streamer.config import load_settings
from streamer.model.buckets import DEFAULT_BUCKETS
from streamer.model.tasks import Task
from streamer.pipeline.executor import thread_env


def test_cpu_policies_are_small_and_unpadded() -> None:
    """On cpu, intent batches stay small, any row count runs without padding rows, and a batch
    runs at its longest row rounded up to 4 tokens; the token budget is still the compiled
    one (4 rows of the 16 bucket)."""
    policies = batch_policies("cpu", load_settings(), DEFAULT_BUCKETS)
    intent = policies["intent"]
    assert intent.max_batch == 4
    assert intent.batch_buckets[:4] == (1, 2, 3, 4)
    longest = DEFAULT_BUCKETS[Task.INTENT].max_seq_len
    assert intent.seq_buckets == (*range(4, longest, 4), longest)
    assert intent.padded_tokens(3, 10) == 3 * 12
    assert intent.padded_tokens(1, 3) == 4
    assert intent.max_padded_tokens == 4 * DEFAULT_BUCKETS[Task.INTENT].seq_lens[0]


def test_cpu_seq_step_zero_keeps_the_compiled_lengths() -> None:
    policies = batch_policies("cpu", load_settings(cpu_intent_seq_step=0), DEFAULT_BUCKETS)
    assert policies["intent"].seq_buckets == DEFAULT_BUCKETS[Task.INTENT].seq_lens
    assert policies["intent"].padded_tokens(3, 10) == 3 * 16


def test_static_shape_targets_pad_to_compiled_buckets() -> None:
    """On cuda/neuron, batches pad to the compiled batch sizes and respect the largest one."""
    policies = batch_policies("cuda", load_settings(), DEFAULT_BUCKETS)
    intent, dup = policies["intent"], policies["duplicate"]
    assert intent.batch_buckets == DEFAULT_BUCKETS[Task.INTENT].batch_sizes
    assert intent.max_batch == 32
    assert dup.max_batch <= DEFAULT_BUCKETS[Task.DUPLICATE].max_batch
    assert intent.padded_tokens(3, 10) == 8 * 16


def test_settings_override_batch_size_within_buckets() -> None:
    """An explicit max batch is honoured but never above the compiled maximum."""
    policies = batch_policies("cpu", load_settings(intent_max_batch=1000), DEFAULT_BUCKETS)
    assert policies["intent"].max_batch == DEFAULT_BUCKETS[Task.INTENT].max_batch


def test_cpu_layout_leaves_a_core_for_the_event_loop() -> None:
    """cpu: workers x threads never exceed cores - 1 (at least one worker)."""
    import os

    workers, threads, env = worker_layout("cpu", load_settings())
    assert workers >= 1 and threads >= 1
    assert workers * threads <= max(1, (os.cpu_count() or 1) - 1)
    assert env is None  # cpu workers need no extra variables; the executor sets the threads
    assert thread_env(threads)["OMP_NUM_THREADS"] == str(threads)


def test_cpu_layout_for_pairs_alone_gives_the_workers_every_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pairs only (throughput-first): model threads may use the event loop's core too."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert worker_layout("cpu", load_settings(routes="duplicate"))[:2] == (1, 2)
    assert worker_layout("cpu", load_settings(routes="intent,duplicate"))[:2] == (1, 1)
    assert worker_layout("cpu", load_settings(routes="intent"))[:2] == (1, 1)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert worker_layout("cpu", load_settings(routes="duplicate"))[:2] == (15, 1)
    assert worker_layout("cpu", load_settings(routes="duplicate", workers=4))[:2] == (4, 4)
    assert worker_layout("cpu", load_settings(routes="intent", workers=4))[:2] == (4, 3)


def test_neuron_layout_pins_one_core_per_worker() -> None:
    """neuron: one worker per NeuronCore, each seeing only its own core."""
    workers, _, env = worker_layout("neuron", load_settings(workers=16))
    assert workers == 16
    assert env(5)["NEURON_RT_VISIBLE_CORES"] == "5"


def test_the_executor_setting_and_its_measured_default() -> None:
    from streamer.app import AUTO_EXECUTOR, executor_kind

    assert executor_kind("cpu", load_settings()) == AUTO_EXECUTOR["cpu"]
    assert executor_kind("cuda", load_settings()) == "multiproc", "a process per device core"
    assert executor_kind("cpu", load_settings(emulate="h200")) == "multiproc"
    assert executor_kind("cuda", load_settings(executor="inprocess")) == "inprocess"
    assert executor_kind("cpu", load_settings(executor="multiproc")) == "multiproc"
