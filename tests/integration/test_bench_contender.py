"""Contender process handling: readiness line, a failed start explained, stop by process group."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from streamer.bench.cpu import process_tree
from streamer.bench.harness import Contender

pytestmark = pytest.mark.timeout(60)


async def test_a_contender_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    code = "import sys; print('no artifact here', file=sys.stderr); sys.exit(4)"
    c = Contender("broken", [sys.executable, "-c", code], {}, None, tmp_path / "broken.log")
    why = await c.start(timeout_s=20)
    assert why is not None and "code 4" in why and "no artifact here" in why


async def test_ready_contender_runs_until_stopped_with_its_children(tmp_path: Path) -> None:
    # the child process stands in for a worker: stopping the contender must stop it too
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('\\x1b[?25lREADY', flush=True)\n"
        "time.sleep(60)\n"
    )
    c = Contender("ok", [sys.executable, "-c", code], {}, None, tmp_path / "ok.log")
    assert await c.start(timeout_s=20) is None
    assert c.alive() and c.meter is not None
    assert c.proc is not None
    for _ in range(100):  # the child may take a moment to appear
        tree = process_tree(c.proc.pid)
        if len(tree) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(tree) >= 2
    await c.stop(timeout_s=10)
    assert not c.alive()
    for _ in range(100):
        if not any(running(pid) for pid in tree):
            break
        await asyncio.sleep(0.05)
    assert not any(running(pid) for pid in tree)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped by init."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
