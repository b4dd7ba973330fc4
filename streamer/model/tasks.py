"""Model tasks: which head of the shared BERT backbone a batch runs through."""

from enum import IntEnum


class Task(IntEnum):
    """Head selector; the integer value travels in the shared-memory slot header."""

    INTENT = 0
    DUPLICATE = 1
