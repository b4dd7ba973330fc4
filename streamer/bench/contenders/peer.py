"""Peer contender: the same job as an idiomatic faust-streaming agent with its own batching.

faust-streaming was chosen over Quix Streams because it installs into this environment without
downgrading anything the service pins (Quix 3.28 needs pydantic < 2.14), and because it runs on
aiokafka, the client the service uses: the comparison isolates the architecture (one asyncio
agent doing decode, tokenize and inference inline with `stream.take(max_, within=)` batches)
from the Kafka client. Faust commits on its own schedule (`broker_commit_every/interval`).

One non-idiomatic line, for fairness: faust hard-codes the consumer's fetch_max_wait_ms=1500;
it is lowered to 5 ms like every other contender (otherwise an idle-ish stream waits 1.5 s).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from streamer.bench.contenders.common import (
    announce_ready,
    kafka_kwargs,
    parser,
    warmup_record,
)
from streamer.bench.contenders.job import ModelJob

FETCH_MAX_WAIT_MS = 5


def _patch_fetch_wait() -> None:
    """Lower faust's hard-coded fetch wait on the worker consumer it builds."""
    from faust.transport.drivers import aiokafka as driver

    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher at start()
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def faust_credentials(kafka: dict[str, Any]) -> Any:
    """The service's TLS and SASL arguments (`kafka_kwargs`) as faust's `broker_credentials`,
    which its aiokafka driver turns back into the same arguments; None for PLAINTEXT."""
    import faust

    context = kafka.get("ssl_context")
    mechanism = kafka.get("sasl_mechanism")
    if mechanism == "OAUTHBEARER":  # AWS MSK IAM
        return faust.OAuthCredentials(
            oauth_cb=kafka["sasl_oauth_token_provider"], ssl_context=context
        )
    if mechanism:
        return faust.SASLCredentials(
            username=kafka["sasl_plain_username"],
            password=kafka["sasl_plain_password"],
            mechanism=mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def build_app(a: argparse.Namespace, job: ModelJob) -> Any:
    """The faust app: one agent, batches of up to --max-batch within --linger-ms."""
    import faust

    app = faust.App(
        a.group,
        broker=f"kafka://{a.bootstrap}",
        broker_credentials=faust_credentials(kafka_kwargs(a)),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=0,  # as the service and naive: no added wait per result
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=0.2,
        topic_disable_leader=True,
        stream_wait_empty=False,
    )
    source = app.topic(a.in_topic, value_type=bytes, key_type=bytes)
    sink = app.topic(a.out_topic, value_type=bytes, key_type=bytes)
    within = a.linger_ms / 1000.0

    @app.agent(source)
    async def infer(stream: Any) -> None:
        async for events in stream.take_events(a.max_batch, within=within):
            records = [(e.value, int(e.message.timestamp * 1000)) for e in events]
            for key, value in job.process(records):
                await sink.send(key=key, value=value)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def ready(sender: Any, **kwargs: Any) -> None:
        if not getattr(app, "_bench_ready", False):
            app._bench_ready = True  # type: ignore[attr-defined]
            announce_ready()

    return app


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m streamer.bench.contenders.peer --bootstrap ... --in-topic ...`."""
    import faust

    a = parser(__doc__ or "").parse_args(argv)
    _patch_fetch_wait()
    job = ModelJob.load(a.artifact, a.route, a.threads, a.force_artifact, a.emulate)
    job.warm_up(warmup_record(a.route))
    app = build_app(a, job)
    worker = faust.Worker(app, loglevel=logging.WARNING, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # runs until SIGTERM, then exits the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
