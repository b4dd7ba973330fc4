"""Measure the int8 recipes side by side on a trained model: agreement with fp32, per CPU.

    python -m compile.quant prepare --artifact models/<name> --dir /tmp/quant   # torch needed
    python -m compile.quant check --dir /tmp/quant                             # ORT only
    qemu-x86_64 -cpu Haswell .venv/bin/python -m compile.quant check --dir /tmp/quant

`prepare` exports (and fuses) the fp32 ONNX graph once, quantizes it with every recipe of `compile.cpu`
and stores the parity sample's golden batches (the fp32 PyTorch reference), as `compile` does.
`check` judges each variant on those batches with the loader's own rule and prints one row per
recipe with the CPU's int8-relevant flags; under QEMU emulating an AVX2-only CPU it shows what
such a machine (no AVX-512, no VNNI) gets. A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from compile.cpu import FP32_FILE, INT8_RECIPES, export_fp32, quantize_int8
from compile.parity import golden_batches, torch_forward
from compile.sample import default_sample
from streamer.model.artifact import load_trained
from streamer.model.hardware import cpu_description, flags_line
from streamer.model.parity import GOLDEN_FILE, check, load_golden, save_golden
from streamer.model.tokenize import Encoder
from streamer.training.data import DEFAULT_DATA_DIR


def prepare(artifact: Path, out: Path, data_dir: Path) -> None:
    """fp32 ONNX, one int8 file per recipe, golden batches and the threshold, in `out`."""
    from streamer.model.network import ServingModel

    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_trained(artifact)
    serving = ServingModel(model).eval()
    export_fp32(model, serving, out / FP32_FILE)  # fused, as `compile` builds it
    for recipe in INT8_RECIPES:
        quantize_int8(out / FP32_FILE, out / f"int8-{recipe}.onnx", recipe)
    sample = default_sample(data_dir)
    golden = golden_batches(torch_forward(serving), Encoder.from_artifact(artifact), meta, sample)
    save_golden(out / GOLDEN_FILE, golden)
    (out / "meta.json").write_text(
        json.dumps(
            {
                "artifact": str(artifact),
                "threshold": meta.duplicate_threshold,
                "sample": sample.source,
                "model": meta.full_name,
            },
            indent=1,
        )
    )
    print(f"prepared {out}: fp32 + {len(INT8_RECIPES)} int8 recipes, {sample.source}")


def check_all(
    out: Path, threads: int | None, label: str, only: set[str] | None = None
) -> list[dict[str, object]]:
    """Agreement of every variant in `out` with the stored fp32 reference, on this CPU: fp32,
    then each int8 recipe alone and refined near decisions (`compile.cpu.refine_margins`)."""
    from compile.cpu import refine_margins
    from streamer.model.backend_ort import OrtForward, RefinedForward
    from streamer.model.parity import expected_outputs, run_batches

    meta = json.loads((out / "meta.json").read_text())
    golden = load_golden(out / GOLDEN_FILE)
    threshold = float(meta["threshold"])
    cpu = label or flags_line(cpu_description())
    rows: list[dict[str, object]] = []

    def row(variant: str, forward: object, extra: dict[str, object]) -> None:
        t0 = time.perf_counter()
        report = check(forward, golden, threshold)  # type: ignore[arg-type]
        rows.append(
            {"model": meta["model"], "variant": variant, "cpu": cpu,
             "seconds": round(time.perf_counter() - t0, 1), **extra, **report}
        )  # fmt: skip

    row("fp32", OrtForward(out / FP32_FILE, threads), {})
    for recipe in INT8_RECIPES:
        if only and recipe not in only:
            continue
        path = out / f"int8-{recipe}.onnx"
        alone = OrtForward(path, threads)
        row(f"int8 {recipe}", alone, {})
        margins = refine_margins(expected_outputs(golden), run_batches(alone, golden))
        refined = RefinedForward(path, out / FP32_FILE, threads, threshold=threshold, **margins)
        row(f"int8 {recipe} + fp32 near decisions", refined, dict(margins))
        rows[-1]["rows_refined"] = round(refined.rows_refined / max(1, refined.rows_seen), 4)
    return rows


def main(argv: list[str] | None = None) -> int:
    """`prepare` or `check`; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m compile.quant", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--artifact", type=Path, required=True, help="trained artifact")
    prep.add_argument("--dir", type=Path, required=True)
    prep.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    chk = sub.add_parser("check")
    chk.add_argument("--dir", type=Path, required=True)
    chk.add_argument("--threads", type=int, default=None)
    chk.add_argument("--cpu-label", default="", help="how to name this CPU (e.g. emulated)")
    chk.add_argument("--only", default="", help="comma list of recipes (default: all)")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.artifact, a.dir, a.data_dir)
        return 0
    rows = check_all(a.dir, a.threads, a.cpu_label, {r for r in a.only.split(",") if r} or None)
    print("| variant | intent labels | duplicate decisions | passes 99% | rows re-run fp32 | CPU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        refined = f"{r['rows_refined']:.1%}" if "rows_refined" in r else ""
        print(
            f"| {r['variant']} | {r['intent_label_agreement']:.1%} | "
            f"{r['duplicate_decision_agreement']:.1%} | {'yes' if r['passed'] else 'no'} | "
            f"{refined} | {r['cpu']} |"
        )
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
