"""Progress: a batch acknowledged at once equals its rows acknowledged one by one."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from streamer.pipeline.backpressure import Backpressure
from streamer.pipeline.state import Progress


def _state() -> SimpleNamespace:
    return SimpleNamespace(backpressure=Backpressure(high=1000, low=500))


@given(st.lists(st.integers(0, 40), unique=True, min_size=1, max_size=40), st.integers(0, 39))
def test_done_rows_matches_done_row_by_row(offsets: list[int], revoke_at: int) -> None:
    batch, single = Progress(), Progress()
    calls = {"batch": 0, "single": 0}
    batch.on_done = lambda: calls.__setitem__("batch", calls["batch"] + 1)
    single.on_done = lambda: calls.__setitem__("single", calls["single"] + 1)
    sb, ss = _state(), _state()
    rows = []
    for off in sorted(offsets):
        for prog, st_ in ((batch, sb), (single, ss)):
            prog.track("tp", off)
            st_.backpressure.add(1)
        rows.append(SimpleNamespace(tp="tp", offset=off, generation=batch.generation("tp")))
    if revoke_at < len(rows):  # a late half: fetched under an assignment since revoked
        batch.revoked(["tp"])
        single.revoked(["tp"])
    batch.done_rows(sb, rows)
    for row in rows:
        single.done(ss, row.tp, row.offset, row.generation)
    assert batch.watermark.advanced() == single.watermark.advanced()
    assert sb.backpressure.inflight == ss.backpressure.inflight == 0
    assert calls == {"batch": 1, "single": len(rows)}
