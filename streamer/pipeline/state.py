"""The state the pipeline's parts share: per route, per partition, and the stop flags.

The intake, the batch runner and the publisher (see `service.py` for how they fit) each own
their I/O; what they share is here, as plain objects passed in at construction:

- `RouteState`: one route's batcher, linger controller, backpressure counter, paused partitions
  and the tasks working on its records;
- `Progress`: per partition, what was fetched and what is done (the offset watermark) and the
  assignment generation, so a result that lands after its partition was revoked is ignored;
- `StopFlags`: set by signals (and by a broken executor); the parts only read them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamer.pipeline.backpressure import Backpressure
from streamer.pipeline.batcher import MicroBatcher
from streamer.pipeline.linger import LingerController
from streamer.pipeline.offsets import OffsetWatermark
from streamer.pipeline.routes import RouteHandler, Row

log = logging.getLogger("streamer.pipeline")


@dataclass
class RouteState:
    """One route's runtime: what decides batches, linger and pausing, and its running work."""

    handler: RouteHandler
    batcher: MicroBatcher[Row]
    linger: LingerController
    backpressure: Backpressure
    p99_target_s: float
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    paused: set[Any] = field(default_factory=set)  # TopicPartitions paused by backpressure

    @property
    def name(self) -> str:
        """The route's name: the label of its metrics."""
        return str(self.handler.route)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work on this route's records as a task the drain can wait for."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class Progress:
    """Per partition: fetched vs done offsets and the assignment generation (no I/O).

    `on_done` is called after every completion, so the intake can resume paused partitions
    as soon as in-flight work drops below the low mark. `on_track` (exactly-once only) sees
    every fetched offset with its generation, so results can be released in offset order.
    """

    def __init__(self) -> None:
        self.watermark = OffsetWatermark()
        self._generation: dict[Hashable, int] = {}
        self.on_done: Callable[[], None] = lambda: None
        self.on_track: Callable[[Hashable, int, int], None] | None = None

    def generation(self, tp: Hashable) -> int:
        """The partition's current assignment generation."""
        return self._generation.get(tp, 0)

    def track(self, tp: Hashable, offset: int) -> int:
        """Record a fetched offset; returns the generation its completion must carry."""
        try:
            self.watermark.track(tp, offset)
        except ValueError:
            # The consumer went back (offset reset / seek): the old tracking is void; late
            # completions of the old generation are ignored by their generation number.
            log.warning("offset went back", extra={"event": "offset_reset", "tp": str(tp)})
            self.watermark.forget(tp)
            self._generation[tp] = self.generation(tp) + 1
            self.watermark.track(tp, offset)
        generation = self.generation(tp)
        if self.on_track is not None:
            self.on_track(tp, offset, generation)
        return generation

    def done_rows(self, state: RouteState, rows: Iterable[Any]) -> None:
        """A batch's results are acknowledged: `done` for each row, with one release and one
        `on_done` for the batch (per-record pause/resume checks cost more than the rest)."""
        n = 0
        watermark, current = self.watermark, self._generation
        for row in rows:
            n += 1
            if current.get(row.tp, 0) == row.generation:
                watermark.done(row.tp, row.offset)
        state.backpressure.remove(n)
        self.on_done()

    def done(self, state: RouteState, tp: Hashable, offset: int, generation: int) -> None:
        """A record's result or dead letter is acknowledged: release it, maybe advance."""
        state.backpressure.remove(1)
        if self.generation(tp) == generation:
            self.watermark.done(tp, offset)
        self.on_done()

    def assigned(self, tps: Iterable[Hashable]) -> None:
        """New assignment: completions fetched under an earlier one no longer count."""
        for tp in tps:
            self._generation[tp] = self.generation(tp) + 1

    def revoked(self, tps: Iterable[Hashable]) -> None:
        """Let partitions go: forget their tracking; their late completions are ignored."""
        for tp in tps:
            self.watermark.forget(tp)
            self._generation[tp] = self.generation(tp) + 1

    def pending_in(self, tps: Iterable[Hashable]) -> bool:
        """Whether any of these partitions still has unacknowledged records."""
        tracked = set(self.watermark.partitions())
        return any(self.watermark.pending(tp) for tp in tps if tp in tracked)


@dataclass
class StopFlags:
    """Set by signal handlers and by an unusable executor; every part only reads them.

    First signal: stop fetching and drain. Second: abandon in-flight work now (uncommitted, so
    the next owner redoes it). `exit_code` 1 records that the service must not exit clean.
    """

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    forced: asyncio.Event = field(default_factory=asyncio.Event)
    signals: int = 0
    exit_code: int = 0

    def request_stop(self) -> None:
        """Stop fetching and drain (idempotent)."""
        self.stopping.set()

    def on_signal(self) -> bool:
        """Count a SIGTERM/SIGINT; returns True if it forces exit (the second one)."""
        self.signals += 1
        self.stopping.set()
        if self.signals >= 2:
            self.forced.set()
        return self.forced.is_set()

    def fail(self) -> None:
        """Stop with exit code 1 (the orchestrator restarts a service that cannot work)."""
        self.exit_code = 1
        self.stopping.set()
