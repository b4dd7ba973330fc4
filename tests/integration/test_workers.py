"""MultiprocExecutor with real worker processes: correctness, crashes, hangs, cleanup.

Each test prints its random seed (set STREAMER_TEST_SEED to replay one).
"""

from __future__ import annotations

import asyncio
import glob
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamer.model.tasks import Task
from streamer.pipeline.executor import (
    ExecutorBrokenError,
    InProcessExecutor,
    MultiprocExecutor,
    RestartPolicy,
    RunnerError,
    RunnerSpec,
    WorkerCrashedError,
    WorkerStartError,
)
from streamer.pipeline.supervisor import Supervisor
from tests.fakes import expected_scores, random_batch

REPO = Path(__file__).resolve().parents[2]
K = 3

pytestmark = pytest.mark.timeout(120)


def segments(pid: int | None = None) -> list[str]:
    """Shared-memory segments created by process `pid` (default: this one)."""
    return glob.glob(f"/dev/shm/streamer-{pid or os.getpid()}-*")


@pytest.fixture
def rng() -> np.random.Generator:
    seed = int(os.environ.get("STREAMER_TEST_SEED", random.randrange(2**32)))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def no_leftovers() -> Any:
    """Fail the test if it leaves segments of this process behind."""
    before = set(segments())
    yield
    assert set(segments()) - before == set()


def fake_spec(**kwargs: Any) -> RunnerSpec:
    return RunnerSpec("tests.fakes:make_fake_runner", {"n_outputs": K, **kwargs})


def make_executor(spec: RunnerSpec, **kwargs: Any) -> MultiprocExecutor:
    options: dict[str, Any] = {
        "workers": 2,
        "threads_per_worker": 1,
        "slots_per_worker": 2,
        "max_batch": 32,
        "max_seq_len": 24,
        "max_outputs": 4,
        "heartbeat_timeout_s": 5.0,
    }
    options.update(kwargs)
    return MultiprocExecutor(spec, **options)


@pytest.fixture
async def executor_factory(no_leftovers: None) -> AsyncIterator[Callable[..., Any]]:
    """Start executors on demand; closes them (and checks cleanup) at the end."""
    made: list[MultiprocExecutor] = []

    async def make(spec: RunnerSpec, **kwargs: Any) -> MultiprocExecutor:
        ex = make_executor(spec, **kwargs)
        made.append(ex)
        await ex.start()
        return ex

    yield make
    for ex in made:
        await ex.close()


def batches(
    rng: np.random.Generator, n: int
) -> list[tuple[Task, np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        task = Task(int(rng.integers(0, 2)))
        b, length = int(rng.integers(1, 33)), int(rng.integers(1, 25))
        out.append((task, *random_batch(rng, b, length)))
    return out


def check(batch: tuple[Task, np.ndarray, np.ndarray, np.ndarray], scores: np.ndarray) -> None:
    task, ids, mask, types = batch
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, expected_scores(task, ids, mask, types, K))


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def pid_alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_concurrent_submits_get_their_own_rows(
    executor_factory: Callable[..., Any], rng: np.random.Generator
) -> None:
    ex = await executor_factory(fake_spec())
    work = batches(rng, 300)
    results = await asyncio.gather(*(ex.submit(*b) for b in work))
    for b, scores in zip(work, results, strict=True):
        check(b, scores)
    assert ex.capacity == 4
    assert ex.restarts == 0


async def test_inprocess_and_multiproc_agree(
    executor_factory: Callable[..., Any], rng: np.random.Generator
) -> None:
    work = batches(rng, 40)
    multi = await executor_factory(fake_spec())
    single = InProcessExecutor(fake_spec())
    await single.start()
    try:
        a = await asyncio.gather(*(multi.submit(*b) for b in work))
        b = [await single.submit(*w) for w in work]
    finally:
        await single.close()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


async def test_both_executors_stamp_the_run_on_the_callers_clock(
    executor_factory: Callable[..., Any], rng: np.random.Generator
) -> None:
    """The tail attribution splits a model call into worker wait, run and return: the worker's
    stamps (CLOCK_MONOTONIC, shared across processes) fall inside the caller's submit."""
    multi = await executor_factory(fake_spec())
    single = InProcessExecutor(fake_spec())
    await single.start()
    try:
        for ex in (multi, single):
            times = SimpleNamespace(run_start=None, run_end=None)
            before = time.monotonic()
            await ex.submit(*batches(rng, 1)[0], times=times)
            after = time.monotonic()
            assert before <= times.run_start <= times.run_end <= after, type(ex).__name__
    finally:
        await single.close()


@pytest.mark.slow
async def test_worker_sigkill_mid_stream_loses_nothing(
    executor_factory: Callable[..., Any], rng: np.random.Generator
) -> None:
    # Slow batches keep both slots of every worker busy, so each kill lands mid-batch.
    ex = await executor_factory(fake_spec(sleep_s=0.01), max_batch_crashes=1000)
    work = batches(rng, 400)
    kills = 4

    async def killer() -> None:
        for _ in range(kills):
            await asyncio.sleep(float(rng.uniform(0.1, 0.3)))
            await wait_for(lambda: ex.live_workers() == ex.workers)
            pid = ex.worker_pids()[int(rng.integers(0, ex.workers))]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

    sem = asyncio.Semaphore(ex.capacity * 2)

    async def one(b: tuple[Task, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        async with sem:
            return await ex.submit(*b)

    kill_task = asyncio.create_task(killer())
    results = await asyncio.gather(*(one(b) for b in work))
    await kill_task
    for b, scores in zip(work, results, strict=True):
        check(b, scores)
    await wait_for(lambda: ex.restarts >= kills)
    assert ex.restarts == kills
    await ex.close()
    assert ex.restarts == kills  # still readable for the final metrics scrape


async def test_hung_worker_is_killed_and_its_batch_redispatched(
    executor_factory: Callable[..., Any], rng: np.random.Generator, tmp_path: Path
) -> None:
    once = tmp_path / "hung-once"
    ex = await executor_factory(
        fake_spec(hang_marker=7, once_file=str(once)), heartbeat_timeout_s=0.5
    )
    task, ids, mask, types = batches(rng, 1)[0]
    ids[0, 0] = 7
    hung = (task, ids, mask, types)
    others = batches(rng, 20)
    results = await asyncio.gather(ex.submit(*hung), *(ex.submit(*b) for b in others))
    check(hung, results[0])
    for b, scores in zip(others, results[1:], strict=True):
        check(b, scores)
    assert once.exists()  # the first worker really did hang on it
    await wait_for(lambda: ex.restarts == 1)


async def test_poison_batch_fails_alone_after_max_crashes(
    executor_factory: Callable[..., Any], rng: np.random.Generator
) -> None:
    ex = await executor_factory(
        fake_spec(crash_marker=5),
        max_batch_crashes=2,
        restart_policy=RestartPolicy(base_delay_s=0.01),
    )
    task, ids, mask, types = batches(rng, 1)[0]
    ids[0, 0] = 5
    others = batches(rng, 10)
    with pytest.raises(WorkerCrashedError, match="2 workers died"):
        await ex.submit(task, ids, mask, types)
    results = await asyncio.gather(*(ex.submit(*b) for b in others))
    for b, scores in zip(others, results, strict=True):
        check(b, scores)
    await wait_for(lambda: ex.live_workers() == 2)
    assert ex.restarts == 2


async def test_crashes_while_running_never_break_the_executor(
    executor_factory: Callable[..., Any], rng: np.random.Generator
) -> None:
    # One worker, and a policy that gives up after a single failed start: repeated
    # crashes on poison batches must still only fail those batches.
    ex = await executor_factory(
        fake_spec(crash_marker=5),
        workers=1,
        max_batch_crashes=2,
        restart_policy=RestartPolicy(base_delay_s=0.01, max_failed_starts=1),
    )
    for _ in range(3):
        task, ids, mask, types = batches(rng, 1)[0]
        ids[0, 0] = 5
        with pytest.raises(WorkerCrashedError):
            await ex.submit(task, ids, mask, types)
    b = batches(rng, 1)[0]
    check(b, await ex.submit(*b))
    assert ex.restarts == 6


async def test_runner_exception_fails_only_its_batch(
    executor_factory: Callable[..., Any], rng: np.random.Generator
) -> None:
    ex = await executor_factory(fake_spec(fail_marker=3))
    task, ids, mask, types = batches(rng, 1)[0]
    ids[0, 0] = 3
    with pytest.raises(RunnerError, match="ValueError: marked row 3"):
        await ex.submit(task, ids, mask, types)
    b = batches(rng, 1)[0]
    check(b, await ex.submit(*b))
    assert ex.restarts == 0


async def test_start_fails_clearly_when_runner_cannot_load(no_leftovers: None) -> None:
    ex = make_executor(fake_spec(load_error="artifact /nope is missing"))
    t0 = time.monotonic()
    with pytest.raises(WorkerStartError, match="artifact /nope is missing") as info:
        await ex.start()
    print(f"start failed after {time.monotonic() - t0:.2f}s: {str(info.value)[:120]}")
    assert "tests.fakes:make_fake_runner" in str(info.value)
    await ex.close()


async def test_load_error_survives_losing_the_race_to_the_exit(
    no_leftovers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the order "process exit handled before the ready message is read".
    def ignore_ready(self: Supervisor, seat: Any, wp: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(wp.ready_r.fileno())

    monkeypatch.setattr(Supervisor, "_on_ready_message", ignore_ready)
    ex = make_executor(fake_spec(load_error="weights are corrupt"), workers=1)
    with pytest.raises(WorkerStartError, match="weights are corrupt"):
        await ex.start()


async def test_restart_storm_gives_up_with_a_clear_error(
    executor_factory: Callable[..., Any], rng: np.random.Generator, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    ex = await executor_factory(
        RunnerSpec("tests.fakes:make_fake_runner", {"n_outputs": K, "fail_load_if": str(broken)}),
        workers=1,
        restart_policy=RestartPolicy(base_delay_s=0.01, max_failed_starts=3),
    )
    broken.touch()  # from now on every restart fails to load
    pid = ex.worker_pids()[0]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ExecutorBrokenError, match="failed to start 3 times") as info:
        await asyncio.wait_for(ex.submit(*batches(rng, 1)[0]), 30)
    assert "refusing to load" in str(info.value)  # the worker's own error text
    assert ex.restarts == 3
    with pytest.raises(ExecutorBrokenError):
        await ex.submit(*batches(rng, 1)[0])


PARENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import numpy as np
    from streamer.pipeline.executor import MultiprocExecutor, RunnerSpec

    async def main() -> None:
        ex = MultiprocExecutor(
            RunnerSpec("tests.fakes:make_fake_runner", {}), workers=2, threads_per_worker=1,
            max_batch=4, max_seq_len=8, max_outputs=4,
        )
        await ex.start()
        ids = np.ones((4, 8), np.int32)
        await ex.submit(0, ids, ids, ids)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", *ex.worker_pids(), flush=True)
        if sys.argv[1:] == ["forget-close"]:
            return  # exits without close(): the atexit hook must clean up
        await stop.wait()
        await ex.close()
        print("closed", flush=True)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def start_parent(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "ready", proc.stderr.read() if proc.stderr else ""
    workers = [int(p) for p in line[1:]]
    return proc, workers


async def test_parent_sigterm_closes_and_leaves_nothing(tmp_path: Path) -> None:
    proc, workers = start_parent(tmp_path)
    assert segments(proc.pid), "parent should hold its segments while running"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "closed" in out
    assert segments(proc.pid) == []
    await wait_for(lambda: not any(pid_alive(p) for p in workers), 10)


@pytest.mark.slow
async def test_parent_sigkill_workers_exit_and_tracker_unlinks(tmp_path: Path) -> None:
    proc, workers = start_parent(tmp_path)
    assert segments(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    # Workers see the death pipe close; once the last one exits, the resource tracker
    # (registered by the parent only) unlinks the segments.
    await wait_for(lambda: not any(pid_alive(p) for p in workers), 15)
    await wait_for(lambda: segments(proc.pid) == [], 15)


async def test_parent_exiting_without_close_cleans_up_at_exit(tmp_path: Path) -> None:
    proc, workers = start_parent(tmp_path, "forget-close")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "leaked" not in err  # the atexit hook unlinked, not the resource tracker
    assert segments(proc.pid) == []
    await wait_for(lambda: not any(pid_alive(p) for p in workers), 10)


@pytest.mark.slow
async def test_real_runner_gives_identical_scores_in_and_out_of_process(
    tiny_cpu_artifact: Path, rng: np.random.Generator, no_leftovers: None
) -> None:
    # tiny_cpu_artifact: the session fixture of tests/fixtures/model.py (real format).
    # fp32: the tiny random model's int8 variant is not meant to pass the parity gate.
    spec = RunnerSpec(
        "streamer.model.runner:load_runner",
        {"artifact_dir": str(tiny_cpu_artifact), "threads": 1, "variant": "fp32"},
    )
    single = InProcessExecutor(spec)
    multi = make_executor(spec, max_batch=32, max_seq_len=128)
    await single.start()
    await multi.start()
    try:
        for task, b, length in [
            (Task.INTENT, 32, 16),
            (Task.INTENT, 1, 16),
            (Task.DUPLICATE, 8, 128),
        ]:
            ids, mask, types = random_batch(rng, b, length)
            ids[:, 0] = 101  # [CLS]
            x = await single.submit(task, ids, mask, types)
            y = await multi.submit(task, ids, mask, types)
            assert x.shape == (b, 4 if task is Task.INTENT else 1)
            np.testing.assert_array_equal(x, y)
    finally:
        await multi.close()
        await single.close()
