"""The streaming data path: batcher, offsets, backpressure, shared-memory workers, service."""
