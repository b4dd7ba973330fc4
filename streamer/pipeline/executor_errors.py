"""Why an executor call failed; the service tells "this batch" from "the executor" by type."""

from __future__ import annotations


class ExecutorError(RuntimeError):
    """Base class of every error an executor raises."""


class WorkerStartError(ExecutorError):
    """A worker could not build its runner (or start at all); carries the worker's traceback."""


class ExecutorBrokenError(ExecutorError):
    """Every worker gave up restarting: no batch can run until the executor is rebuilt."""


class ExecutorClosedError(ExecutorError):
    """The executor was closed before (or while) the batch ran."""


class RunnerError(ExecutorError):
    """The runner raised on this batch; the worker is fine and keeps serving."""


class WorkerCrashedError(ExecutorError):
    """Workers kept dying while running this batch (a poison batch): it is not retried again."""
