"""Passthrough contender: the physical limit of the Kafka client on this machine.

The same events consumed and a same-sized result produced and committed, with aiokafka, batched
(up to 500 records per fetch, every send in flight at once), and nothing else: no decode, no
tokenizer, no model. Like the service, it never waits for acknowledgements or a commit before
the next fetch: each fetched batch's sends are awaited in a task of their own, and offsets
whose results are acknowledged are committed in the background, in fetch order, at most every
`COMMIT_INTERVAL_S`. (A first version fetched, awaited every ack, committed and only then
fetched again: it capped near 2,700/s with a 14 ms P50 here and the service beat it by 60%,
so it was no limit.) Every other contender's max sustained rate is reported as a share of
this one's, so the comparison holds on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from streamer.bench.contenders.common import announce_ready, kafka_kwargs, parser

# Roughly an encoded result of each route (IntentResult / DuplicateResult JSON).
RESULT_BYTES = {"intent": 260, "duplicate": 300}
COMMIT_INTERVAL_S = 0.05


async def serve(a: argparse.Namespace) -> int:
    """Consume, produce a fixed-size result per record (same key), commit per batch."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    kafka = kafka_kwargs(a)
    consumer = AIOKafkaConsumer(
        a.in_topic,
        **kafka,
        group_id=a.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    producer = AIOKafkaProducer(**kafka, linger_ms=0, acks="all")
    value = b"x" * RESULT_BYTES[a.route]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await consumer.start()
    await producer.start()
    processed = 0
    acked: dict[object, int] = {}  # partition -> next offset whose result is acknowledged
    previous: asyncio.Future[None] | None = None

    async def settle(
        futures: list[asyncio.Future[object]],
        offsets: dict[object, int],
        before: asyncio.Future[None] | None,
    ) -> None:
        nonlocal processed
        await asyncio.gather(*futures)
        if before is not None:
            await before  # acknowledged in fetch order: a commit never skips a batch
        acked.update(offsets)
        processed += len(futures)

    async def committer() -> None:
        committed: dict[object, int] = {}
        while not stop.is_set():
            if acked != committed:
                todo = dict(acked)
                await consumer.commit(todo)
                committed = todo
            await asyncio.sleep(COMMIT_INTERVAL_S)

    try:
        while not consumer.assignment() and not stop.is_set():
            await consumer.getmany(timeout_ms=100)
        announce_ready()
        commits = asyncio.create_task(committer())
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            if not batch:
                continue
            futures = [
                await producer.send(a.out_topic, value, key=r.key)
                for records in batch.values()
                for r in records
            ]
            offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items()}
            previous = asyncio.ensure_future(settle(futures, offsets, previous))
        await commits
        if previous is not None:
            await previous
        if acked:
            await consumer.commit(dict(acked))  # the last acknowledged offsets
    finally:
        await consumer.stop()
        await producer.stop()
    print(f"passthrough: processed={processed}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m streamer.bench.contenders.passthrough --bootstrap ...`."""
    return asyncio.run(serve(parser(__doc__ or "").parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
