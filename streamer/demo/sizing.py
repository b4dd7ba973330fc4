"""How much load the demo offers: a fraction of what the model alone does on this machine.

A fixed rate is wrong somewhere: 100 queries/s was idle on one development machine and a
backlog of seconds on another (fp32 on an AVX2-only CPU), and a backlog is all a newcomer would
see. So the demo first times the served model on real events, batched as the service batches
them on a CPU (4 queries, 8 pairs of one length bucket), with one thread as each demo service's
worker gets, and offers a fraction of those ceilings. The fraction leaves the rest of the
machine to what runs beside the model: two service event loops, the broker, the load
generator and the consumers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INTENT_BATCH = 4  # the service's cpu batch sizes (streamer.app.batch_policies)
PAIR_BATCH = 8


@dataclass(frozen=True)
class Ceilings:
    """Model-only rows per second per path on this machine (one thread), and what served."""

    queries_per_s: float
    pairs_per_s: float
    variant: str
    selection: str


def _time_batches(run: object, batches: list[tuple[np.ndarray, ...]], budget_s: float) -> float:
    """Rows per second over repeated passes of the batches, for about `budget_s`."""
    rows = 0
    start = time.perf_counter()
    while True:
        for ids, mask, types in batches:
            run(ids, mask, types)  # type: ignore[operator]
            rows += ids.shape[0]
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return rows / elapsed


def measure_ceilings(artifact: Path, budget_s: float = 2.0) -> Ceilings:
    """Time the served variant on real sample events (queries and pairs from the data)."""
    from streamer.bench.data import PairSource, QuerySource
    from streamer.model.runner import load_runner
    from streamer.model.serialize import serialize_product
    from streamer.model.tasks import Task
    from streamer.model.tokenize import Encoder

    runner = load_runner(artifact, threads=1)
    encoder = Encoder.from_artifact(artifact)
    queries = QuerySource(seed=3).queries[:64]
    pairs = PairSource(seed=3).pairs[:48]
    q_batches = [
        _arrays(encoder.encode_queries(queries[i : i + INTENT_BATCH]))
        for i in range(0, len(queries), INTENT_BATCH)
    ]
    lefts = [serialize_product(p.left.as_dict()) for p in pairs]
    rights = [serialize_product(p.right.as_dict()) for p in pairs]
    # Pairs of one length bucket batch together in the service: sort by length, then cut.
    order = np.argsort([len(a) + len(b) for a, b in zip(lefts, rights, strict=True)])
    p_batches = []
    for i in range(0, len(order), PAIR_BATCH):
        rows = [int(j) for j in order[i : i + PAIR_BATCH]]
        p_batches.append(
            _arrays(encoder.encode_pairs([lefts[j] for j in rows], [rights[j] for j in rows]))
        )
    intent = _time_batches(lambda *a: runner.run(Task.INTENT, *a), q_batches, budget_s)
    dup = _time_batches(lambda *a: runner.run(Task.DUPLICATE, *a), p_batches, budget_s)
    return Ceilings(intent, dup, runner.model.variant, runner.selection)


def _arrays(batch: object) -> tuple[np.ndarray, ...]:
    return (batch.input_ids, batch.attention_mask, batch.token_type_ids)  # type: ignore[attr-defined]


def choose_rates(ceilings: Ceilings, fraction: float) -> tuple[float, float, str]:
    """(queries/s, pairs/s, why): `fraction` of each model-only ceiling, at least 1/s each."""
    queries = max(1.0, round(ceilings.queries_per_s * fraction))
    pairs = max(1.0, round(ceilings.pairs_per_s * fraction))
    why = (
        f"the model alone ({ceilings.variant}, 1 thread) does {ceilings.queries_per_s:.0f} "
        f"queries/s in batches of {INTENT_BATCH} and {ceilings.pairs_per_s:.0f} pairs/s in "
        f"batches of {PAIR_BATCH} here; the demo offers {fraction:.0%} of each, leaving the "
        "rest of the machine to the event loops, the broker, the load generator and the consumers"
    )
    return queries, pairs, why
