"""What the service said, shown to a person: a few queries with their intent, a few pairs with
their score, read back from the result topics and joined with the events they answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class IntentExample:
    """One query and the label the service published for it."""

    query: str
    intent: str
    confidence: float


@dataclass(frozen=True)
class PairExample:
    """One product pair and the duplicate score the service published for it."""

    left: str
    right: str
    score: float
    is_duplicate: bool


async def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value of a topic up to its current end (no consumer group, nothing committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streamer.kafka.topics import describe_topics

    info = (await describe_topics(bootstrap, [topic]))[topic]
    partitions = [TopicPartition(topic, p) for p in sorted(info.leaders)]
    # auto_offset_reset="earliest" and explicit seeks: seek_to_beginning() only schedules a
    # reset, and with the default "latest" the fetcher's own reset can win the race, which
    # left every position at the end and the demo's answer tables empty.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        values: list[bytes] = []
        while True:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= ends[tp] for tp in partitions):
                return values
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            values += [m.value for messages in batch.values() for m in messages if m.value]
    finally:
        await consumer.stop()


def _by_event_id(values: list[bytes]) -> dict[str, dict[str, Any]]:
    out = {}
    for value in values:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue  # the demo's malformed records
        if isinstance(doc, dict) and isinstance(doc.get("event_id"), str):
            out[doc["event_id"]] = doc
    return out


def pick_intents(results: list[bytes], queries: list[bytes], n: int = 6) -> list[IntentExample]:
    """Up to `n` answered queries: the most confident of each label first, then the next ones."""
    sources = _by_event_id(queries)
    answered = [
        (doc, sources[doc["event_id"]]["query"])
        for doc in _by_event_id(results).values()
        if doc["event_id"] in sources
    ]
    answered.sort(key=lambda item: -float(item[0]["confidence"]))
    chosen: list[tuple[dict[str, Any], str]] = []
    labels: set[str] = set()
    for doc, query in answered:  # one per label, most confident first
        if doc["intent"] not in labels:
            labels.add(doc["intent"])
            chosen.append((doc, query))
    seen = {query for _, query in chosen}
    for doc, query in answered:  # then the next most confident, each query once (the load
        if len(chosen) >= n:  # generator repeats queries from a small sample)
            break
        if query not in seen:
            seen.add(query)
            chosen.append((doc, query))
    return [IntentExample(q, d["intent"], float(d["confidence"])) for d, q in chosen[:n]]


def _title(product: dict[str, Any]) -> str:
    brand = product.get("brand")
    title = str(product.get("title", ""))
    return f"{title} ({brand})" if brand and brand.lower() not in title.lower() else title


def pick_pairs(results: list[bytes], pairs: list[bytes], n: int = 6) -> list[PairExample]:
    """Up to `n` answered pairs: the highest-scored duplicates and the clearest distinct ones."""
    sources = _by_event_id(pairs)
    answered = [
        (doc, sources[doc["event_id"]])
        for doc in _by_event_id(results).values()
        if doc["event_id"] in sources
    ]
    answered.sort(key=lambda item: -float(item[0]["score"]))
    duplicates = [a for a in answered if a[0]["is_duplicate"]][: n // 2]
    distinct = [a for a in reversed(answered) if not a[0]["is_duplicate"]][: n - len(duplicates)]
    return [
        PairExample(_title(src["left"]), _title(src["right"]), float(d["score"]), d["is_duplicate"])
        for d, src in duplicates + distinct
    ]
