"""What this machine's CPU can do that changes a model's numbers: the int8 and bf16 instructions.

ONNX Runtime picks its int8 GEMM kernels from these (u8s8 with VNNI or AMX; without VNNI the
AVX2 / AVX-512BW kernels add pairs of u8 x s8 products into int16 with saturation), so int8
results differ by machine. The manifest records the compile machine's set; the start-up parity
check logs the serving machine's.
"""

from __future__ import annotations

import platform
from pathlib import Path

# Flags that select different int8 / reduced-precision kernels (x86 /proc/cpuinfo "flags",
# arm64 "Features").
RELEVANT_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "i8mm",
    "sve",
    "bf16",
)


def cpu_description(cpuinfo: str | None = None) -> dict[str, object]:
    """{"machine", "model", "flags"}: the CPU model name and which RELEVANT_FLAGS it has."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return {
        "machine": platform.machine(),
        "model": model,
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
    }


def flags_line(description: dict[str, object]) -> str:
    """`x86_64 AMD EPYC [avx2 avx512f ...]` for logs and reports."""
    flags = description.get("flags") or []
    assert isinstance(flags, list)
    return f"{description.get('machine')} {description.get('model')} [{' '.join(flags) or 'none'}]"
