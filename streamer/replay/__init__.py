"""Backfills: `streamer replay` re-scores a fixed offset range of the input topics with the
service's own parts (bounded source, checkpoint, replay headers), isolated from the live group."""
