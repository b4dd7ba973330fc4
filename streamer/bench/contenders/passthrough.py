"""Passthrough contender: the physical limit of the Kafka client on this machine.

The same events consumed and a same-sized result produced and committed, with aiokafka, batched
(up to 500 records per fetch, every send in flight at once, a commit per fetched batch), and
nothing else: no decode, no tokenizer, no model. Every other contender's max sustained rate is
reported as a share of this one's, so the comparison holds on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from streamer.bench.contenders.common import announce_ready, parser

# Roughly an encoded result of each route (IntentResult / DuplicateResult JSON).
RESULT_BYTES = {"intent": 260, "duplicate": 300}


async def serve(a: argparse.Namespace) -> int:
    """Consume, produce a fixed-size result per record (same key), commit per batch."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        a.in_topic,
        bootstrap_servers=a.bootstrap,
        group_id=a.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, linger_ms=0, acks="all")
    value = b"x" * RESULT_BYTES[a.route]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await consumer.start()
    await producer.start()
    processed = 0
    try:
        while not consumer.assignment() and not stop.is_set():
            await consumer.getmany(timeout_ms=100)
        announce_ready()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            if not batch:
                continue
            futures = [
                await producer.send(a.out_topic, value, key=r.key)
                for records in batch.values()
                for r in records
            ]
            await asyncio.gather(*futures)
            await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
            processed += len(futures)
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
