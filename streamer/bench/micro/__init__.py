"""Micro-benchmarks of single parts (executor transport, record codec), beside the harness.

They print numbers, never assert them; `python -m streamer.bench.micro.transport` and
`python -m streamer.bench.micro.codec`.
"""
