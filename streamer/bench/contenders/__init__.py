"""Contenders the harness runs side by side; each Kafka one is a module started as a subprocess."""
