"""The demo's answer table: one row per label first, then other queries, never one twice."""

from __future__ import annotations

import orjson

from streamer.demo.examples import pick_intents


def _event(event_id: str, query: str) -> bytes:
    return orjson.dumps({"event_id": event_id, "query": query})


def _result(event_id: str, intent: str, confidence: float) -> bytes:
    return orjson.dumps({"event_id": event_id, "intent": intent, "confidence": confidence})


def test_each_label_then_distinct_queries_most_confident_first() -> None:
    queries = [_event("a1", "pay help"), _event("a2", "pay help"), _event("a3", "pay help"),
               _event("b", "red shoes"), _event("c", "weather"), _event("d", "help me log in"),
               b"not json"]  # fmt: skip
    results = [_result("a1", "help", 0.99), _result("a2", "help", 0.99),
               _result("a3", "help", 0.99), _result("b", "product", 0.9),
               _result("c", "other", 0.8), _result("d", "help", 0.7)]  # fmt: skip
    picked = pick_intents(results, queries, n=4)
    assert [(p.query, p.intent) for p in picked] == [
        ("pay help", "help"), ("red shoes", "product"), ("weather", "other"),
        ("help me log in", "help"),
    ]  # fmt: skip
