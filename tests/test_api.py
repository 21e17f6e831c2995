"""The public face: what ``substantial`` exports, pinned."""

from __future__ import annotations

import substantial

PUBLIC = [
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

# Re-exported objects the package gives ``substantial`` as their home.
HOMED = [
    "AESGCMCodec",
    "ChildHandle",
    "Conductor",
    "Context",
    "Handle",
    "HistoryEvent",
    "PayloadCodec",
    "LimitInfo",
    "RetryPolicy",
    "RunStatus",
    "Schedule",
    "ScheduleInfo",
    "Workflow",
    "ZlibCodec",
    "ZstdCodec",
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


# The other public modules, each with its names pinned: a change here is a change of the
# public API, made on purpose (internals live in the underscored packages).
FACES = {
    "substantial.backends": [
        "Backend", "Entry", "FSBackend", "MemoryBackend", "RedisBackend", "S3Backend",
        "from_url",
    ],
    "substantial.codec": [
        "DEFAULT_CODEC", "Codec", "JSONCodec", "decode_payload", "encode_payload",
        "get_codec", "register_codec", "register_payload_codec", "register_type",
    ],
    "substantial.errors": sorted(
        name for name in PUBLIC if name[0].isupper() and name not in HOMED
    ),
    "substantial.ops": [
        "ACTIONS", "BulkResult", "GcResult", "Progress", "ReplayCheck", "RunDetails",
        "RunFilter", "RunSummary", "bulk", "check_replay", "describe_run", "gc", "get_run",
        "iter_run_ids", "iter_runs", "list_runs", "plain_value", "runs_on_old_branch",
    ],
    "substantial.logs": ["RUN_FORMAT", "RunContextFilter", "install"],
    "substantial.telemetry": ["ENABLED", "OUTCOMES", "configure"],
    "substantial.testing": ["Replayer", "WorkflowEnvironment"],
    "substantial.cli": ["main"],
}  # fmt: skip


def test_each_public_module_exports_its_pinned_names() -> None:
    import importlib

    for module_name, names in FACES.items():
        module = importlib.import_module(module_name)
        assert sorted(module.__all__) == sorted(names), module_name
        for name in names:
            assert getattr(module, name) is not None, f"{module_name}.{name}"
