"""Worker process: builds one runner from a RunnerSpec and serves batches from its slots.

Lifecycle (vLLM's multiproc worker is the model):

1. Spawned (never forked: the parent runs an event loop and threads) with the thread
   environment already in place, so torch / onnxruntime read it at import.
2. Attaches its segment (`shm_ring`), builds the runner, then reports on the ready pipe:
   ``b"R" + JSON`` (what the runner serves: `describe()`, e.g. the variant the start-up
   parity check chose) or ``b"E" + traceback`` (the parent's `start()` raises with that text).
3. Loops: block on the wake-up pipe -> slot index -> run -> scores into the slot ->
   slot index onto the completion pipe. Heartbeat = progress stamp at pickup and finish.
4. Exits when the wake-up pipe reaches EOF (the parent closed it or died), or when the
   death pipe reaches EOF (checked by a thread, so it works even while a batch hangs).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from streamer.model.tasks import Task
from streamer.pipeline.shm_ring import RingHandle, SlotState, WorkerRing

READY = b"R"
LOAD_ERROR = b"E"


@dataclass(frozen=True)
class RunnerSpec:
    """Picklable recipe a worker process uses to build its runner: "module:function" + kwargs."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def runner_identity(runner: Any) -> dict[str, Any]:
    """What the runner says it serves (`describe()`), or {} for runners that do not say."""
    describe = getattr(runner, "describe", None)
    return dict(describe()) if callable(describe) else {}


def build_runner(spec: RunnerSpec) -> Any:
    """Import `spec.factory` and call it with `spec.kwargs`; the result has `.run(...)`."""
    module_name, sep, attr = spec.factory.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"runner factory must be 'module:function', got {spec.factory!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    runner = factory(**spec.kwargs)
    if not callable(getattr(runner, "run", None)):
        raise TypeError(f"{spec.factory} returned {type(runner).__name__} without a run() method")
    return runner


@dataclass(frozen=True)
class WorkerArgs:
    """Everything a worker needs besides its pipes; picklable for the spawn start method."""

    index: int
    generation: int
    spec: RunnerSpec
    ring: RingHandle
    env: dict[str, str]


def _exit_when_parent_dies(death_r: Connection) -> None:
    # A daemon thread rather than a check in the main loop: a batch stuck inside the
    # runner must not keep an orphaned worker (and its device core) alive.
    def watch() -> None:
        try:
            while os.read(death_r.fileno(), 1):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch, name="death-pipe", daemon=True).start()


def worker_main(
    args: WorkerArgs,
    wake_r: Connection,
    done_w: Connection,
    ready_w: Connection,
    death_r: Connection,
) -> None:
    """Process entry point (spawn target)."""
    # The service owns shutdown: Ctrl-C reaches the whole process group, and workers
    # must not die before the parent has drained and closed them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(args.env)
    _exit_when_parent_dies(death_r)
    ring = WorkerRing.attach(args.ring)
    ring.set_worker_pid(os.getpid())
    ring.beat()
    try:
        runner = build_runner(args.spec)
        identity = json.dumps(runner_identity(runner)).encode()
    except BaseException:
        ready_w.send_bytes(LOAD_ERROR + traceback.format_exc().encode("utf-8", "replace"))
        ready_w.close()
        ring.close()
        sys.exit(1)
    ready_w.send_bytes(READY + identity)
    ready_w.close()
    try:
        serve(ring, runner, wake_r.fileno(), done_w.fileno())
    finally:
        del runner
        ring.close()


def serve(ring: WorkerRing, runner: Any, wake_fd: int, done_fd: int) -> None:
    """Serve batches until the wake-up pipe closes; one byte in, one byte out per batch."""
    while True:
        wakeups = os.read(wake_fd, 256)
        if not wakeups:
            return
        for index in wakeups:
            run_slot(ring, runner, index)
            try:
                os.write(done_fd, bytes((index,)))
            except BrokenPipeError:
                return


def run_slot(ring: WorkerRing, runner: Any, index: int) -> None:
    """Run the batch in slot `index` and leave it DONE or FAILED (never raises for the runner)."""
    slot = ring.slots[index]
    if slot.state is not SlotState.SUBMITTED:
        slot.write_error(f"slot {index} woken in state {slot.state.name}, expected SUBMITTED")
        return
    slot.set_state(SlotState.RUNNING)
    ring.beat()
    try:
        input_ids, attention_mask, token_type_ids = slot.request_views()
        start = time.monotonic_ns()
        scores = runner.run(Task(slot.task), input_ids, attention_mask, token_type_ids)
        slot.stamp_run(start, time.monotonic_ns())
        slot.write_result(np.asarray(scores))
    except Exception as exc:
        slot.write_error(f"{type(exc).__name__}: {exc}")
    ring.beat()
