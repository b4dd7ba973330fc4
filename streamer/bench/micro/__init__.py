"""Micro-benchmarks of single parts (executor transport, record codec, trace context), beside the
harness.

They print numbers, never assert them; `python -m streamer.bench.micro.transport`,
`python -m streamer.bench.micro.codec` and `python -m streamer.bench.micro.tracing`.
"""
