"""Benchmark harness: open-loop load, contenders side by side, reports."""
