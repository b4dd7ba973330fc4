"""Micro-benchmarks of single parts (executor transport, record codec, trace context, result
compression), beside the harness.

They print numbers, never assert them; `python -m streamer.bench.micro.transport`,
`python -m streamer.bench.micro.codec`, `python -m streamer.bench.micro.tracing` and
`python -m streamer.bench.micro.compression`.
"""
