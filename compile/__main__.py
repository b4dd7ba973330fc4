"""`python -m compile --target cpu|cuda|neuron|neuronx --artifact DIR [--out DIR]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compile.common import default_out_dir
from compile.sample import builtin_sample, default_sample
from streamer.model.artifact import ArtifactError
from streamer.model.manifest import TARGETS
from streamer.training.data import DEFAULT_DATA_DIR


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m compile", description=__doc__)
    parser.add_argument("--target", required=True, choices=TARGETS)
    parser.add_argument("--artifact", required=True, type=Path, help="trained artifact dir")
    parser.add_argument("--out", type=Path, default=None, help="default <artifact>-<target>")
    parser.add_argument(
        "--sample",
        choices=("data", "builtin"),
        default="data",
        help="parity sample: valid-split rows of --data-dir (default) or the built-in texts",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--dtype", default="bfloat16", help="cuda only: bfloat16 | float16")
    parser.add_argument("--threads", type=int, default=None, help="cpu parity run threads")
    parser.add_argument(
        "--int8-recipe",
        default=None,
        help="cpu only: int8 quantization recipe (compile.cpu.INT8_RECIPES; `python -m "
        "compile.quant` measures them)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Compile, print the manifest's parity figures; exit 2 on a clear artifact/backend error."""
    args = build_parser().parse_args(argv)
    out = args.out or default_out_dir(args.artifact, args.target)
    sample = default_sample(args.data_dir) if args.sample == "data" else builtin_sample()
    try:
        if args.target == "cpu":
            from compile.cpu import DEFAULT_INT8_RECIPE, compile_cpu

            calibration = (
                default_sample(args.data_dir, offset=0.5) if args.sample == "data" else None
            )
            manifest = compile_cpu(
                args.artifact, out, sample, threads=args.threads,
                int8_recipe=args.int8_recipe or DEFAULT_INT8_RECIPE, calibration=calibration,
            )  # fmt: skip
        elif args.target == "cuda":
            from compile.cuda import compile_cuda

            manifest = compile_cuda(args.artifact, out, sample, dtype=args.dtype)
        else:
            from compile.neuron import compile_neuron

            manifest = compile_neuron(args.artifact, out, sample, target=args.target)
    except ArtifactError as exc:
        print(f"compile: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    for name, info in manifest["variants"].items():
        print(f"{name}: {json.dumps(info['parity'])}")
    print(f"default variant: {manifest['default_variant']}")
    if "default_variant_reason" in manifest:
        print(f"  ({manifest['default_variant_reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
