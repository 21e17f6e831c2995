"""
substantial: brokerless durable execution for Python.

Workflows are plain ``async def`` functions that take a :class:`Context`; their progress
is an event log on storage you already run (a folder, Redis, S3), and any number of
agents share the work through atomic operations on that storage.
"""

from __future__ import annotations

from substantial._client.handle import Handle, HistoryEvent
from substantial._client.limits import LimitInfo
from substantial._client.schedules import Schedule, ScheduleInfo
from substantial._conductor import Conductor
from substantial._core.retry import RetryPolicy
from substantial._core.status import RunStatus
from substantial._engine.children import ChildHandle
from substantial._engine.context import Context
from substantial._engine.workflow import Workflow, workflow
from substantial._payload_codecs import AESGCMCodec, PayloadCodec, ZlibCodec, ZstdCodec
from substantial.errors import (
    BackendError,
    BackendRefused,
    BackendUnavailable,
    ChildRunIdTaken,
    CodecError,
    CompactionError,
    CompensationFailed,
    CorruptLog,
    EncryptedPayload,
    ForkError,
    InvalidArguments,
    InvalidAttribute,
    InvalidName,
    InvalidRunId,
    InvalidSchedule,
    LeaseLost,
    NonDeterminismError,
    NotAWorkflow,
    RunCancelled,
    RunError,
    RunFailed,
    RunFinished,
    RunNotFound,
    RunReverted,
    RunTerminated,
    ScheduleNotFound,
    StepFailed,
    SubstantialError,
    UnknownWorkflow,
)

__all__ = [
    "AESGCMCodec",
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
    "EncryptedPayload",
    "ForkError",
    "Handle",
    "HistoryEvent",
    "InvalidArguments",
    "InvalidAttribute",
    "InvalidName",
    "InvalidRunId",
    "InvalidSchedule",
    "LeaseLost",
    "LimitInfo",
    "NonDeterminismError",
    "NotAWorkflow",
    "PayloadCodec",
    "RetryPolicy",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "RunFinished",
    "RunNotFound",
    "RunReverted",
    "RunStatus",
    "RunTerminated",
    "Schedule",
    "ScheduleInfo",
    "ScheduleNotFound",
    "StepFailed",
    "SubstantialError",
    "UnknownWorkflow",
    "Workflow",
    "ZlibCodec",
    "ZstdCodec",
    "__version__",
    "workflow",
]

__version__ = "0.1.0"

for _name in (
    "AESGCMCodec",
    "PayloadCodec",
    "ZlibCodec",
    "ZstdCodec",
    "Conductor",
    "Context",
    "RetryPolicy",
    "ChildHandle",
    "Handle",
    "HistoryEvent",
    "LimitInfo",
    "RunStatus",
    "Schedule",
    "ScheduleInfo",
    "Workflow",
    "workflow",
):
    globals()[_name].__module__ = "substantial"
del _name
