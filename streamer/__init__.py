"""streamer: Kafka in, BERT multi-task inference on per-core workers, Kafka out."""

__version__ = "0.1.0"
