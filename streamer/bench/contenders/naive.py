"""Naive contender: the first app a team writes. One message at a time, a commit after each.

It is not a straw man: the consumer has the same latency-tuned fetch settings as the service
(fetch_max_wait_ms=5), the producer a 1 ms linger, and the model is the same compiled artifact.
What it lacks is batching and pipelining: every event pays a full model call, a produce
round trip and a commit round trip before the next one starts.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from streamer.bench.contenders.common import announce_ready, kafka_kwargs, parser, warmup_record
from streamer.bench.contenders.job import ModelJob


async def serve(a: argparse.Namespace) -> int:
    """Consume, process, produce and commit one record at a time until SIGTERM."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    job = ModelJob.load(a.artifact, a.route, a.threads, a.force_artifact, a.emulate)
    job.warm_up(warmup_record(a.route))
    kafka = kafka_kwargs(a)
    consumer = AIOKafkaConsumer(
        a.in_topic,
        **kafka,
        group_id=a.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    # linger 0 (aiokafka's default): a one-at-a-time app gains nothing from waiting.
    producer = AIOKafkaProducer(**kafka, linger_ms=0, acks="all")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await consumer.start()
    await producer.start()
    try:
        while not consumer.assignment() and not stop.is_set():
            await consumer.getmany(timeout_ms=100)
        announce_ready()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=1)
            for tp, records in batch.items():
                for r in records:
                    for key, value in job.process([(r.value, r.timestamp)]):
                        await producer.send_and_wait(a.out_topic, value, key=key)
                    await consumer.commit({tp: r.offset + 1})
    finally:
        await consumer.stop()
        await producer.stop()
    c = job.counters
    print(f"naive: processed={c.processed} rejected={c.rejected}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m streamer.bench.contenders.naive --bootstrap ... --in-topic ...`."""
    return asyncio.run(serve(parser(__doc__ or "").parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
