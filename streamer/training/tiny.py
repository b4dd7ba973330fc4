"""A tiny random-weight model built through the real code path, for tests and demos.

2 layers, hidden 32, the real MiniLM tokenizer and vocabulary and the same artifact format as
the trained model, in seconds. Its scores mean nothing; compiled with `python -m compile`
like any trained artifact, its shapes, files, manifest and runtime behaviour are exactly the
real model's. `python -m streamer.training.tiny --out DIR` writes `DIR/tiny-multitask-v0`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.model.artifact import ModelMeta, save_trained
from streamer.model.buckets import DEFAULT_BUCKETS

TINY_NAME = "tiny-multitask"
TINY_VERSION = "v0"
TINY_LABELS = ("help", "media", "other", "product")
HEAD_SCALE = 12.0
DUPLICATE_BIAS = 2.0  # puts the scaled duplicate scores on both sides of the 0.5 threshold


def build_tiny_artifact(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a random-weight trained-format artifact to `out_dir` (created)."""
    import torch
    from transformers import BertConfig

    from streamer.model.network import MultiTaskBert, backbone_dir

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        # Wide random weights spread the outputs, so labels and decisions are not coin flips
        # that quantization noise could flip (parity is checked on this model too).
        initializer_range=0.5,
    )
    config._attn_implementation = "sdpa"
    model = MultiTaskBert(config, len(TINY_LABELS)).eval()
    with torch.no_grad():
        # Decisive heads: default-initialised heads give near-uniform probabilities, i.e.
        # labels that any rounding flips. Scaled, most rows have a clear winner and duplicate
        # scores far from the threshold, so tests can compare variants on non-coin-flip rows.
        intent_out, duplicate_out = model.intent_head[-1], model.duplicate_head[-1]
        assert isinstance(intent_out, torch.nn.Linear)
        assert isinstance(duplicate_out, torch.nn.Linear)
        intent_out.weight.mul_(HEAD_SCALE)
        duplicate_out.weight.mul_(HEAD_SCALE)
        duplicate_out.bias.fill_(DUPLICATE_BIAS)
    meta = ModelMeta(
        name=TINY_NAME,
        version=TINY_VERSION,
        labels=TINY_LABELS,
        duplicate_threshold=0.5,
        buckets=dict(DEFAULT_BUCKETS),
        backbone=config.to_diff_dict() | {"model_type": "bert"},
    )
    card = f"# Model card: {meta.full_name}\n\nRandom weights for tests; scores are meaningless.\n"
    return save_trained(
        model, Path(out_dir), meta, backbone_dir() / "tokenizer.json", model_card=card
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: write the tiny trained artifact under --out."""
    parser = argparse.ArgumentParser(prog="python -m streamer.training.tiny", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    trained = build_tiny_artifact(args.out / f"{TINY_NAME}-{TINY_VERSION}")
    print(trained)
    return 0


if __name__ == "__main__":
    sys.exit(main())
