"""`make ship-model ARTIFACT=...`: the trained artifact becomes the one model in `models/`.

One model in the tree at a time (every committed model stays in git history, so this is rare):
the previous one is removed, the new one copied with its weights in fp16 (half the size; the
loader widens them to fp32), its tokenizer, labels, model card and eval.json. Prints the size
to state in the commit.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from streamer.config import repo_root
from streamer.model.artifact import (
    CONFIG,
    EVAL,
    LABELS,
    MODEL_CARD,
    TOKENIZER,
    TRAINED_FORMAT,
    WEIGHTS,
)

MODELS = repo_root() / "models"
FILES = (WEIGHTS, CONFIG, LABELS, TOKENIZER, MODEL_CARD, EVAL)


def ship(artifact: Path, models: Path = MODELS) -> Path:
    """Replace models/* with `artifact` (fp16 weights); returns the new directory."""
    from safetensors.torch import load_file, save_file

    artifact = Path(artifact)
    missing = [f for f in FILES if not (artifact / f).is_file()]
    if missing:
        raise SystemExit(f"{artifact} lacks {missing}: not a trained artifact from make model")
    models.mkdir(exist_ok=True)
    for old in models.iterdir():
        if old.is_dir():
            shutil.rmtree(old)
    out = models / artifact.name
    out.mkdir()
    for name in FILES:
        if name != WEIGHTS:
            shutil.copyfile(artifact / name, out / name)
    state = load_file(str(artifact / WEIGHTS))
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(half, str(out / WEIGHTS), metadata={"format": TRAINED_FORMAT})
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ship the artifact given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m streamer.training.ship artifacts/<name>-<version>", file=sys.stderr)
        return 2
    out = ship(Path(args[0]))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"shipped {out} ({size / 1e6:.1f} MB; weights {(out / WEIGHTS).stat().st_size / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
