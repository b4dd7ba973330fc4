"""Where the ops tests find helm, promtool, prometheus and KEDA's CRDs.

`make ops-tools` (deploy/tools/install.sh, which `make test` runs first) installs them into
$STREAMER_OPS_DIR, default ~/.cache/streamer/ops. A missing tool fails the test with that
command: these checks never skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ops_dir() -> Path:
    """The tools' directory."""
    return Path(os.environ.get("STREAMER_OPS_DIR", Path.home() / ".cache" / "streamer" / "ops"))


def tool(name: str) -> Path:
    """An installed tool's path (helm, promtool, prometheus); fails the test when absent."""
    path = ops_dir() / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found at {path}: run `make ops-tools`", pytrace=False)
    return path


def keda_dir() -> Path:
    """KEDA's CRDs and Kafka scaler source, from the KEDA Go module."""
    path = ops_dir() / "keda"
    if not (path / "keda.sh_scaledobjects.yaml").is_file():
        pytest.fail(f"KEDA CRDs not found in {path}: run `make ops-tools`", pytrace=False)
    return path
