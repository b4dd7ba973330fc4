"""The model job every contender performs: decode, tokenize, pad to a bucket, run, encode results.

The contenders differ only in how they move records through Kafka and how they batch. The job
itself reuses the service's own route handlers (same codec, same tokenizer, same result records),
so a difference in the numbers is a difference in plumbing, not in work done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.errors import DecodeError


@dataclass
class JobCounters:
    """What the job saw, for the contender's exit summary."""

    processed: int = 0
    rejected: int = 0
    batches: int = 0


class ModelJob:
    """Decode -> tokenize -> run the compiled model -> result records, for one route."""

    def __init__(self, handler: Any, runner: Any, buckets: Any) -> None:
        self.handler = handler
        self.runner = runner
        self.buckets = buckets
        self.counters = JobCounters()

    @classmethod
    def load(
        cls,
        artifact: str | Path,
        route: str,
        threads: int | None = None,
        force: bool = False,
        emulate: str | None = None,
    ) -> ModelJob:
        """Load the artifact's model, tokenizer and buckets for `route`; `force` skips parity;
        `emulate` serves the EMULATED device instead of the model (as the service does)."""
        from streamer.config import load_settings
        from streamer.model.manifest import served_meta
        from streamer.model.runner import load_runner
        from streamer.model.tasks import Task
        from streamer.model.tokenize import Encoder
        from streamer.pipeline.routes import make_routes

        artifact = Path(artifact)
        if emulate:
            from streamer.model.backend_emulated import load_emulated_runner

            emulated = load_emulated_runner(artifact, emulate)
            settings = load_settings(routes=route, artifact=str(artifact))
            (handler,) = make_routes(settings, emulated.model, Encoder.from_artifact(artifact))
            return cls(handler, emulated, emulated.model.buckets[Task[route.upper()]])
        model = served_meta(artifact)
        settings = load_settings(routes=route, artifact=str(artifact))
        (handler,) = make_routes(settings, model, Encoder.from_artifact(artifact))
        buckets = model.buckets[Task[route.upper()]]
        kwargs: dict[str, Any] = {"artifact_dir": str(artifact), "force": force}
        if threads:
            kwargs["threads"] = threads
        return cls(handler, load_runner(**kwargs), buckets)

    def warm_up(self, sample: bytes, n: int = 3) -> None:
        """Run a few records through every stage so the first measured event pays no lazy init."""
        for _ in range(n):
            self.process([(sample, int(time.time() * 1000))])
        self.counters = JobCounters()

    def process(self, records: list[tuple[bytes, int]]) -> list[tuple[bytes, bytes]]:
        """(value, Kafka timestamp ms) records -> (key, result value); bad records are dropped."""
        from streamer.model.buckets import choose_batch, choose_seq_len
        from streamer.pipeline.routes import Row, pack_rows

        events, stamps = [], []
        for raw, ts in records:
            try:
                events.append(self.handler.decode(raw))
                stamps.append(ts)
            except DecodeError:
                self.counters.rejected += 1
        if not events:
            return []
        out: list[tuple[bytes, bytes]] = []
        step = self.buckets.max_batch
        for start in range(0, len(events), step):
            chunk = events[start : start + step]
            encoded = self.handler.tokenize(chunk)
            rows = [
                Row(
                    None,
                    0,
                    0,
                    None,
                    ev,
                    ev.ts_ms if ev.ts_ms is not None else ts,
                    ids,
                    types,
                    trunc,
                )
                for ev, ts, (ids, types, trunc) in zip(
                    chunk, stamps[start : start + step], encoded, strict=True
                )
            ]
            seq = choose_seq_len(self.buckets, max(r.n_tokens for r in rows))
            ids, mask, types = pack_rows(rows, choose_batch(self.buckets, len(rows)), seq)
            scores = self.runner.run(self.handler.task, ids, mask, types)
            values = self.handler.results(rows, scores)
            out.extend((ev.event_id.encode(), v) for ev, v in zip(chunk, values, strict=True))
            self.counters.batches += 1
        self.counters.processed += len(events)
        return out
