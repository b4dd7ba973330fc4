"""Record types, the codec (bytes <-> typed records) and the typed decode errors."""
