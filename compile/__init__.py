"""Per-target compilation of a trained artifact into a serving artifact (`python -m compile`)."""
