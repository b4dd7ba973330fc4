"""CPU seconds of a process tree, from /proc: the cost side of every throughput number.

A contender that reaches a rate by burning both cores is worse than one that reaches it on
half a core; the broker's JVM is metered too because a chatty client costs broker CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


def parse_stat(text: str) -> tuple[int, float]:
    """(ppid, CPU seconds incl. waited-for children) from one /proc/<pid>/stat line."""
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    ppid = int(rest[1])
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return ppid, (utime + stime + cutime + cstime) / _CLK_TCK


def _read_stat(pid: int, proc: Path) -> tuple[int, float] | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # the process exited between listing and reading


def process_tree(root: int, proc: Path = PROC) -> dict[int, float]:
    """CPU seconds of `root` and every live descendant, keyed by pid."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            st = _read_stat(int(entry.name), proc)
            if st is not None:
                stats[int(entry.name)] = st
    if root not in stats:
        return {}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        tree[pid] = stats[pid][1]
        todo.extend(children.get(pid, []))
    return tree


class CpuMeter:
    """Monotonic CPU-seconds counter for a process tree whose members may come and go.

    A child that exits and is reaped moves its time into the parent's cutime/cstime; one that
    exits between two samples without being reaped yet would vanish, so each pid's last seen
    value is kept and the total never goes backwards.
    """

    def __init__(self, root: int, proc: Path = PROC) -> None:
        self.root = root
        self.proc = proc
        self._last: dict[int, float] = {}
        self._gone = 0.0

    def sample(self) -> float:
        """Total CPU seconds used by the tree since it started."""
        now = process_tree(self.root, self.proc)
        for pid, secs in self._last.items():
            if pid not in now:
                self._gone += secs
        self._last = now
        return self._gone + sum(now.values())


def listening_pid(port: int, proc: Path = PROC) -> int | None:
    """Pid of the process listening on a local TCP port (to meter the broker we actually use)."""
    inodes: set[str] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except OSError:
            continue
    return None
