"""The public face: what ``substantial`` exports, pinned."""

from __future__ import annotations

import substantial

PUBLIC = [
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
    "InvalidName",
    "InvalidRunId",
    "InvalidSchedule",
    "LeaseLost",
    "LimitInfo",
    "NonDeterminismError",
    "NotAWorkflow",
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
    "__version__",
    "workflow",
]

# Re-exported objects the package gives ``substantial`` as their home.
HOMED = [
    "ChildHandle",
    "Conductor",
    "Context",
    "Handle",
    "HistoryEvent",
    "RetryPolicy",
    "RunStatus",
    "Workflow",
    "workflow",
]


def test_all_is_the_pinned_sorted_list() -> None:
    assert substantial.__all__ == PUBLIC
    assert substantial.__all__ == sorted(substantial.__all__)


def test_every_public_name_is_importable() -> None:
    for name in substantial.__all__:
        assert getattr(substantial, name) is not None, name


def test_reexports_name_substantial_as_their_module() -> None:
    for name in HOMED:
        assert getattr(substantial, name).__module__ == "substantial", name


def test_errors_live_in_substantial_errors() -> None:
    import substantial.errors

    for name in substantial.__all__:
        obj = getattr(substantial, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert obj.__module__ == "substantial.errors", name
            assert getattr(substantial.errors, name) is obj


def test_version_is_a_string() -> None:
    assert isinstance(substantial.__version__, str)
