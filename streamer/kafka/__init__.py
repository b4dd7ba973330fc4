"""Kafka plumbing: the local broker recipe, topic admin and client factories."""
