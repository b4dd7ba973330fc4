"""Deterministic fake runners for executor tests: `RunnerSpec("tests.fakes:make_fake_runner", {...})`.

Every score is a pure function of its own row (`expected_scores`), so a test can check
that each row of each batch came back with its own answer, whichever worker ran it.
Markers in `input_ids[:, 0]` make a worker misbehave: crash (SIGKILL itself), hang
(sleep forever) or raise. With `once_file`, only the first worker to see the marker
misbehaves (it creates the file atomically), so a re-dispatched batch then succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import numpy as np

MODULUS = 1_000_003  # keeps scores exact in float32 (< 2**24)


def expected_scores(
    task: int,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray,
    n_outputs: int,
) -> np.ndarray:
    """The fake's answer: per row, f(masked id sum, type-id sum, task) for each output k."""
    ids = input_ids.astype(np.int64)
    masked = (ids * attention_mask.astype(np.int64)).sum(axis=1)
    types = token_type_ids.astype(np.int64).sum(axis=1)
    k = np.arange(1, n_outputs + 1, dtype=np.int64)
    raw = masked[:, None] * k[None, :] + 7 * types[:, None] + 1000 * int(task)
    return (raw % MODULUS).astype(np.float32)


def _claim(once_file: str | None) -> bool:
    """True if this call should misbehave: always without once_file, else only the first."""
    if once_file is None:
        return True
    try:
        os.close(os.open(once_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@dataclass
class FakeRunner:
    """A runner whose output is checkable and whose failures are scripted."""

    n_outputs: int = 3
    sleep_s: float = 0.0
    crash_marker: int | None = None
    hang_marker: int | None = None
    fail_marker: int | None = None
    once_file: str | None = None
    zero: bool = False

    def run(
        self,
        task: int,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ) -> np.ndarray:
        """Score a batch (see `expected_scores`), misbehaving on marked rows."""
        first = input_ids[:, 0]

        def marked(marker: int | None) -> bool:
            return marker is not None and bool((first == marker).any())

        if marked(self.crash_marker) and _claim(self.once_file):
            os.kill(os.getpid(), signal.SIGKILL)
        if marked(self.hang_marker) and _claim(self.once_file):
            while True:
                time.sleep(3600)
        if marked(self.fail_marker):
            raise ValueError(f"marked row {self.fail_marker}")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.zero:
            return np.zeros((input_ids.shape[0], self.n_outputs), np.float32)
        return expected_scores(task, input_ids, attention_mask, token_type_ids, self.n_outputs)


def make_fake_runner(
    n_outputs: int = 3,
    sleep_s: float = 0.0,
    crash_marker: int | None = None,
    hang_marker: int | None = None,
    fail_marker: int | None = None,
    once_file: str | None = None,
    zero: bool = False,
    load_error: str | None = None,
    load_sleep_s: float = 0.0,
    fail_load_if: str | None = None,
    threads: int | None = None,
) -> FakeRunner:
    """Runner factory; `load_error` (or the file `fail_load_if` existing) makes loading raise."""
    if load_sleep_s:
        time.sleep(load_sleep_s)
    if load_error is not None:
        raise RuntimeError(load_error)
    if fail_load_if is not None and os.path.exists(fail_load_if):
        raise RuntimeError(f"{fail_load_if} exists: refusing to load")
    return FakeRunner(
        n_outputs=n_outputs,
        sleep_s=sleep_s,
        crash_marker=crash_marker,
        hang_marker=hang_marker,
        fail_marker=fail_marker,
        once_file=once_file,
        zero=zero,
    )


def random_batch(
    rng: np.random.Generator, batch: int, seq_len: int, *, low: int = 1000, high: int = 30000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A padded int32 batch with random lengths, ids above any marker, mixed type ids."""
    ids = rng.integers(low, high, size=(batch, seq_len), dtype=np.int32)
    lengths = rng.integers(1, seq_len + 1, size=batch)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids *= mask
    types = ((np.arange(seq_len)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int32)
    return ids, mask, types
