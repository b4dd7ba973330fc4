"""CPU accounting from /proc: stat parsing and a tree that loses a child mid-run."""

from __future__ import annotations

import os
from pathlib import Path

from streamer.bench import cpu


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0) -> str:
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime), str(cutime), "0"] + ["0"] * 20
    return f"{pid} ({comm}) " + " ".join(fields)


def fake_proc(tmp_path: Path, procs: dict[int, tuple[str, int, int, int]]) -> Path:
    for pid, (comm, ppid, ut, st) in procs.items():
        (tmp_path / str(pid)).mkdir(exist_ok=True)
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid, comm, ppid, ut, st))
    return tmp_path


def test_parse_stat_survives_odd_process_names() -> None:
    ppid, secs = cpu.parse_stat(stat_line(7, "py (worker) 1", 3, 150, 50, cutime=100))
    assert ppid == 3
    assert secs == (150 + 50 + 100) / os.sysconf("SC_CLK_TCK")


def test_tree_sums_descendants_only(tmp_path: Path) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(
        tmp_path,
        {
            10: ("root", 1, hz, 0),
            11: ("child", 10, hz, hz),
            12: ("grandchild", 11, 0, hz),
            20: ("stranger", 1, 50 * hz, 0),
        },
    )
    assert cpu.process_tree(10, proc) == {10: 1.0, 11: 2.0, 12: 1.0}
    assert cpu.process_tree(99, proc) == {}


def test_meter_never_goes_backwards_when_a_child_exits(tmp_path: Path) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(tmp_path, {10: ("root", 1, hz, 0), 11: ("child", 10, 3 * hz, 0)})
    meter = cpu.CpuMeter(10, proc)
    assert meter.sample() == 4.0
    (proc / "11" / "stat").unlink()
    (proc / "11").rmdir()
    assert meter.sample() == 4.0


def test_meter_on_this_process_counts_real_cpu() -> None:
    meter = cpu.CpuMeter(os.getpid())
    before = meter.sample()
    sum(i * i for i in range(2_000_000))
    assert meter.sample() > before
