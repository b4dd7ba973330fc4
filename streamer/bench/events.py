"""Benchmark events as the service's codec writes them (same schema as real upstream traffic)."""

from __future__ import annotations

from streamer.bench.data import Product, ProductPair


def query_event_bytes(event_id: str, scheduled_ms: int, query: str) -> bytes:
    """A search.queries.v1 record stamped with its scheduled time."""
    from streamer.records.codec import encode_query_event
    from streamer.records.types import QueryEvent

    return encode_query_event(QueryEvent(event_id=event_id, query=query, ts_ms=scheduled_ms))


def _record_product(p: Product) -> object:
    from streamer.records.types import Product as RecordProduct

    return RecordProduct(
        id=p.id,
        title=p.title or p.id,  # a few ditto rows have no title; the schema needs one
        brand=p.brand or None,
        product_type=p.product_type or None,
        description=p.description or None,
        price=p.price,
        model_number=p.model_number or None,
    )


def pair_event_bytes(event_id: str, scheduled_ms: int, pair: ProductPair) -> bytes:
    """A search.product-pairs.v1 record stamped with its scheduled time."""
    from streamer.records.codec import encode_pair_event
    from streamer.records.types import ProductPairEvent

    event = ProductPairEvent(
        event_id=event_id,
        left=_record_product(pair.left),  # type: ignore[arg-type]
        right=_record_product(pair.right),  # type: ignore[arg-type]
        ts_ms=scheduled_ms,
    )
    return encode_pair_event(event)


class EventFactory:
    """Cycles real payloads of one kind into encoded events for the load generator."""

    def __init__(self, kind: str, data_root: str | None = None, seed: int = 7) -> None:
        from streamer.bench.data import PairSource, QuerySource

        if kind not in ("query", "pair"):
            raise ValueError(f"kind must be 'query' or 'pair', not {kind!r}")
        self.kind = kind
        if kind == "query":
            self._queries = QuerySource(data_root, seed=seed).queries
        else:
            self._pairs = PairSource(data_root, seed=seed).pairs

    def __call__(self, event_id: str, scheduled_ms: int, seq: int) -> bytes:
        """Encode event number `seq` (payloads cycle through the data set)."""
        if self.kind == "query":
            return query_event_bytes(
                event_id, scheduled_ms, self._queries[seq % len(self._queries)]
            )
        return pair_event_bytes(event_id, scheduled_ms, self._pairs[seq % len(self._pairs)])
