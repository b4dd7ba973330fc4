"""Fuzzing of the record decoders: the oracle both fuzzers use, and the atheris entry point."""
