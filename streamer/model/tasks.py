"""The two tasks the multi-task model serves; an IntEnum so shared memory can carry it as an int."""

from __future__ import annotations

from enum import IntEnum


class Task(IntEnum):
    """Which head of the model a batch is for (the value travels over shared memory)."""

    INTENT = 0
    DUPLICATE = 1
