"""
substantial: brokerless durable execution for Python.

Workflows are plain ``async def`` functions that take a :class:`Context`; their progress
is an event log on storage you already run (a folder, Redis, S3), and any number of
agents share the work through atomic operations on that storage.
"""

from __future__ import annotations

from substantial.conductor import Conductor
from substantial.context import ChildHandle, Context, RetryPolicy
from substantial.errors import (
    BackendError,
    BackendRefused,
    BackendUnavailable,
    ChildRunIdTaken,
    CodecError,
    CompactionError,
    CompensationFailed,
    CorruptLog,
    InvalidArguments,
    InvalidRunId,
    LeaseLost,
    NonDeterminismError,
    RunCancelled,
    RunError,
    RunFailed,
    RunNotFound,
    RunReverted,
    StepFailed,
    SubstantialError,
    UnknownWorkflow,
)
from substantial.handle import Handle, HistoryEvent, RunStatus
from substantial.workflow import Workflow, workflow

__all__ = [
    "BackendError",
    "BackendRefused",
    "BackendUnavailable",
    "ChildHandle",
    "ChildRunIdTaken",
    "CodecError",
    "CompactionError",
    "CompensationFailed",
    "Conductor",
    "Context",
    "CorruptLog",
    "Handle",
    "HistoryEvent",
    "InvalidArguments",
    "InvalidRunId",
    "LeaseLost",
    "NonDeterminismError",
    "RetryPolicy",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "RunNotFound",
    "RunReverted",
    "RunStatus",
    "StepFailed",
    "SubstantialError",
    "UnknownWorkflow",
    "Workflow",
    "__version__",
    "workflow",
]

__version__ = "0.1.0"

for _name in (
    "Conductor",
    "Context",
    "RetryPolicy",
    "ChildHandle",
    "Handle",
    "HistoryEvent",
    "RunStatus",
    "Workflow",
    "workflow",
):
    globals()[_name].__module__ = "substantial"
del _name
