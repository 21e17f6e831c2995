"""
Operator tooling over a backend: list runs, describe one, check that stored logs still
replay against the current code, and delete old finished runs. The ``substantial`` CLI
presents these; they work the same from Python::

    runs = await list_runs(backend, status=RunStatus.PARKED)
    problems = [c for c in await check_replay(conductor, backend) if not c.ok]
    await gc(backend, timedelta(days=30), dry_run=True)

Values are shown without importing user code: payloads of the JSON codec are read as
plain JSON (a dataclass becomes its fields, a datetime its ISO string).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from substantial import hints
from substantial.backends.base import Backend
from substantial.codec import decode_payload
from substantial.errors import CodecError, CorruptLog, NonDeterminismError, RunNotFound
from substantial.handle import STATUS_FROM_PB, HistoryEvent, RunStatus
from substantial.protocol import substantial_pb2 as pb
from substantial.quarantine import QuarantinedEntry, list_quarantined
from substantial.replay import Execution
from substantial.runs import (
    SCHEDULE_PREFIX,
    RunStore,
    ScheduleEntry,
    check_run_id,
    inbox_prefix,
    lease_key,
    now_ms,
    segment_key,
)
from substantial.workflow import Workflow

__all__ = [
    "GcResult",
    "ReplayCheck",
    "RunDetails",
    "RunSummary",
    "check_replay",
    "describe_run",
    "gc",
    "get_run",
    "iter_run_ids",
    "list_runs",
    "plain_value",
]

RUNS_PREFIX = "runs/"
#: Sorts after every key under ``runs/{run}/`` (their next character is a lowercase
#: letter), so listing ``after=runs/{run}/~`` skips the rest of a run's keys at once.
_PAST_RUN = "~"
_PAGE = 1000
_DELETE_BATCH = 100
_GC_LEASE_MS = 60_000

#: ``progress(done, total)``; ``total`` is ``None`` while it is not known yet.
Progress = Callable[[int, int | None], None]


def _no_progress(done: int, total: int | None) -> None:
    pass


# ---- values ----


def plain_value(payload: pb.Payload) -> Any:
    """
    A payload as plain JSON-compatible data, without importing the classes it names.

    :raises CodecError: if the payload's codec is not JSON and it cannot be decoded
    """
    if payload.codec == "json":
        try:
            return _untag(json.loads(payload.data))
        except ValueError as exc:
            raise CodecError(f"payload is not JSON: {exc}") from exc
    return _jsonable(decode_payload(payload))


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "$t" not in value:
        return {key: _untag(item) for key, item in value.items()}
    if value["$t"] == "dict":
        return {
            key if isinstance(key, str) else json.dumps(_untag(key)): _untag(item)
            for key, item in value.get("v", [])
        }
    return _untag(value.get("v"))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _time(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


# ---- listing ----


@dataclass(frozen=True)
class RunSummary:
    """
    One run as its summary record (``runs/{run}/meta``) describes it, or as its first
    log segment does when the summary is missing.

    :ivar run_id: the run's id
    :ivar workflow: the workflow's registered name
    :ivar status: where the run is (the summary is a hint written after each wake-up)
    :ivar created: when it was started
    :ivar updated: when its summary was last written
    :ivar wake_at: when a sleeping run wakes
    :ivar args: the positional and keyword arguments, as plain data
    :ivar result: the result of a completed run, as plain data
    :ivar error: ``Type: message`` of a failed run
    :ivar parked_reason: why a parked run no longer replays
    """

    run_id: str
    workflow: str
    status: RunStatus
    created: datetime | None
    updated: datetime | None
    wake_at: datetime | None = None
    args: Any = None
    result: Any = None
    error: str = ""
    parked_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-compatible dict (times as ISO 8601 strings)."""

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status.value,
            "created": iso(self.created),
            "updated": iso(self.updated),
            "wake_at": iso(self.wake_at),
            "args": self.args,
            "result": self.result,
            "error": self.error or None,
            "parked_reason": self.parked_reason or None,
        }


def _summary(meta: pb.RunMeta) -> RunSummary:
    status = STATUS_FROM_PB.get(meta.status, RunStatus.PENDING)
    error = ""
    if meta.HasField("failure"):
        error = f"{meta.failure.type}: {meta.failure.message}"
    return RunSummary(
        run_id=meta.run_id,
        workflow=meta.workflow,
        status=status,
        created=_time(meta.created_ms),
        updated=_time(meta.updated_ms or meta.created_ms),
        wake_at=_time(meta.wake_at_ms),
        args=_safe_plain(meta.args) if meta.HasField("args") else None,
        result=_safe_plain(meta.result) if meta.HasField("result") else None,
        error=error,
        parked_reason=meta.parked_reason,
    )


def _safe_plain(payload: pb.Payload) -> Any:
    try:
        return plain_value(payload)
    except CodecError as exc:
        return f"<undecodable: {exc}>"


async def iter_run_ids(backend: Backend, *, page: int = _PAGE) -> AsyncIterator[str]:
    """
    Every run id on the backend, in key order. Lists ``runs/`` a page at a time and skips
    past the rest of the last run seen on each page, so a run with many log segments
    costs one request, not one per thousand segments.
    """
    after: str | None = None
    last: str | None = None
    while True:
        keys = await backend.list(RUNS_PREFIX, after=after, limit=page)
        for key in keys:
            run_id = key[len(RUNS_PREFIX) :].partition("/")[0]
            if run_id != last:
                last = run_id
                yield run_id
        if len(keys) < page or last is None:
            return
        after = f"{RUNS_PREFIX}{last}/{_PAST_RUN}"


async def _summaries(backend: Backend, run_ids: Sequence[str]) -> list[RunSummary | None]:
    store = RunStore(backend)
    entries = await backend.get_many([f"{RUNS_PREFIX}{run_id}/meta" for run_id in run_ids])
    found: list[RunSummary | None] = []
    for run_id, entry in zip(run_ids, entries, strict=True):
        if entry is not None:
            try:
                found.append(_summary(pb.RunMeta.FromString(entry[0])))
                continue
            except Exception:  # a torn summary: fall back to the log, the truth
                pass
        found.append(await _summary_from_log(store, run_id))
    return found


async def _summary_from_log(store: RunStore, run_id: str) -> RunSummary | None:
    """
    A run whose summary is missing (a start that died before writing it) or unreadable:
    rebuilt from its log, or, if the log cannot be read either, from its start.
    """
    try:
        stored = await store.read_log(run_id)
    except CorruptLog:
        pass
    else:
        return _summary(hints.summary_from_log(run_id, stored)) if stored.events else None
    entry = await store.backend.get(segment_key(run_id, 0))
    if entry is None:
        return None
    try:
        segment = pb.Segment.FromString(entry[0])
    except Exception:
        return None
    if not segment.events or segment.events[0].WhichOneof("kind") != "started":
        return None
    first = segment.events[0]
    return RunSummary(
        run_id=run_id,
        workflow=first.started.workflow,
        status=RunStatus.PENDING,
        created=_time(first.at_ms),
        updated=_time(first.at_ms),
        args=_safe_plain(first.started.args),
    )


async def list_runs(
    backend: Backend,
    workflow: str | None = None,
    status: RunStatus | Iterable[RunStatus] | None = None,
    started_before: datetime | None = None,
    started_after: datetime | None = None,
    *,
    progress: Progress = _no_progress,
) -> list[RunSummary]:
    """
    The runs on ``backend`` that match every filter given, oldest first.

    Enumerating runs lists every key under ``runs/`` (skipping long logs), which is fine
    for an operator command but not for a hot path.

    :param workflow: only runs of this workflow name
    :param status: only runs in this status (or one of these)
    :param started_before: only runs started before this time
    :param started_after: only runs started at or after this time
    :param progress: called with the number of runs read so far
    :raises BackendUnavailable: if the storage cannot be reached
    """
    wanted: set[RunStatus] | None = None
    if status is not None:
        wanted = {status} if isinstance(status, RunStatus) else set(status)
    found: list[RunSummary] = []
    batch: list[str] = []
    seen = 0

    async def flush() -> None:
        nonlocal seen
        for summary in await _summaries(backend, batch):
            if summary is not None and _matches(
                summary, workflow, wanted, started_before, started_after
            ):
                found.append(summary)
        seen += len(batch)
        batch.clear()
        progress(seen, None)

    async for run_id in iter_run_ids(backend):
        batch.append(run_id)
        if len(batch) >= _PAGE:
            await flush()
    await flush()
    epoch = datetime.fromtimestamp(0, UTC)
    found.sort(key=lambda s: (s.created or epoch, s.run_id))
    return found


def _matches(
    summary: RunSummary,
    workflow: str | None,
    statuses: set[RunStatus] | None,
    before: datetime | None,
    after: datetime | None,
) -> bool:
    if workflow is not None and summary.workflow != workflow:
        return False
    if statuses is not None and summary.status not in statuses:
        return False
    if before is not None and (summary.created is None or summary.created >= before):
        return False
    return not (after is not None and (summary.created is None or summary.created < after))


# ---- one run ----


async def get_run(backend: Backend, run_id: str) -> RunSummary:
    """
    One run's summary.

    :raises RunNotFound: if the run has neither a summary nor a log
    """
    (summary,) = await _summaries(backend, [check_run_id(run_id)])
    if summary is None:
        raise RunNotFound(run_id)
    return summary


@dataclass(frozen=True)
class RunDetails:
    """
    Everything stored about one run.

    :ivar summary: its summary record
    :ivar history: its log, one entry per event, values as plain data
    :ivar inbox: events sent to it and not yet merged into its log
    :ivar lease_owner: the agent working on it now, if any
    :ivar lease_expires: when that lease runs out
    :ivar quarantined: inbox entries set aside because the agent could not merge them
    """

    summary: RunSummary
    history: list[HistoryEvent]
    inbox: int = 0
    lease_owner: str = ""
    lease_expires: datetime | None = None
    quarantined: list[QuarantinedEntry] = field(default_factory=list)


async def describe_run(backend: Backend, run_id: str) -> RunDetails:
    """
    Read a run's summary, log, inbox and lease.

    :raises RunNotFound: if the run has neither a summary nor a log
    :raises CorruptLog: if a log segment cannot be read
    """
    summary = await get_run(backend, run_id)
    store = RunStore(backend)
    stored = await store.read_log(run_id)
    history: list[HistoryEvent] = []
    segment = 0
    for index, event in enumerate(stored.events):
        while index >= stored.segment_ends[segment]:
            segment += 1
        history.append(_history_event(event, segment))
    inbox = len(await backend.list_all(inbox_prefix(run_id)))
    lease = await store.lease_holder(run_id)
    return RunDetails(
        summary=summary,
        history=history,
        inbox=inbox,
        lease_owner=lease.owner if lease is not None and lease.expires_ms > now_ms() else "",
        lease_expires=_time(lease.expires_ms) if lease is not None else None,
        quarantined=await list_quarantined(backend, run_id),
    )


def _history_event(event: pb.Event, segment: int) -> HistoryEvent:
    kind = event.WhichOneof("kind") or "unknown"
    body = getattr(event, kind)
    details: dict[str, Any] = {}
    for descriptor, value in body.ListFields():
        if isinstance(value, pb.Payload):
            details[descriptor.name] = _safe_plain(value)
        elif isinstance(value, pb.Failure):
            details[descriptor.name] = {"type": value.type, "message": value.message}
        elif isinstance(value, bytes):
            details[descriptor.name] = value.hex()
        else:
            details[descriptor.name] = value
    at = _time(event.at_ms) or datetime.fromtimestamp(0, UTC)
    return HistoryEvent(segment, at, kind, details)


# ---- replay check ----


@dataclass(frozen=True)
class ReplayCheck:
    """
    The outcome of replaying one run's stored log against the current code.

    :ivar run_id: the run
    :ivar workflow: its workflow name
    :ivar outcome: ``ok``, ``nondeterminism``, ``unknown workflow``, ``corrupt log``,
        ``undecodable`` or ``not found``
    :ivar detail: the error's message, empty when ``ok``
    :ivar position: for ``nondeterminism``, the primitive's position (None: the end)
    :ivar logged: for ``nondeterminism``, what the log recorded there
    :ivar code: for ``nondeterminism``, what the code does there
    :ivar versions: the answer each ``Context.version(change_id)`` call gave on replay
    """

    run_id: str
    workflow: str
    outcome: str
    detail: str = ""
    position: int | None = None
    logged: str = ""
    code: str = ""
    versions: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the log replays cleanly."""
        return self.outcome == "ok"


async def check_replay(
    workflows: Any,
    backend: Backend,
    run_ids: Sequence[str] | None = None,
    *,
    include_finished: bool = False,
    progress: Progress = _no_progress,
) -> list[ReplayCheck]:
    """
    Replay stored logs against the current code of ``workflows`` and report each run's
    outcome: a deploy gate. Nothing is written and no step runs; the code only sees
    recorded results.

    :param workflows: a :class:`~substantial.Conductor` (its registered workflows) or
        an iterable of ``@workflow`` functions
    :param run_ids: check these runs, whatever their status; default: every unfinished
        run (and finished ones too with ``include_finished``)
    :param include_finished: also check completed, failed and cancelled runs
    :param progress: called with the number of runs checked and the total
    :raises BackendUnavailable: if the storage cannot be reached
    """
    known = {wf.name: wf for wf in getattr(workflows, "workflows", workflows)}
    if run_ids is None:
        summaries = await list_runs(backend)
        run_ids = [s.run_id for s in summaries if include_finished or not s.status.finished]
    store = RunStore(backend)
    checks: list[ReplayCheck] = []
    for done, run_id in enumerate(run_ids, start=1):
        checks.append(await _check_one(store, known, run_id))
        progress(done, len(run_ids))
    return checks


async def _check_one(store: RunStore, known: dict[str, Workflow[Any]], run_id: str) -> ReplayCheck:
    try:
        stored = await store.read_log(run_id)
    except CorruptLog as exc:
        return ReplayCheck(run_id, "", "corrupt log", str(exc))
    if not stored.events:
        return ReplayCheck(run_id, "", "not found", f"run {run_id!r} has no log")
    name = stored.events[0].started.workflow
    workflow = known.get(name)
    if workflow is None:
        return ReplayCheck(
            run_id, name, "unknown workflow", f"workflow {name!r} is not in the current code"
        )
    execution = Execution(run_id, workflow)
    try:
        execution.replay(stored.events)
    except NonDeterminismError as exc:
        return ReplayCheck(
            run_id, name, "nondeterminism", str(exc), exc.position, exc.logged, exc.code
        )
    except CodecError as exc:
        return ReplayCheck(run_id, name, "undecodable", str(exc))
    finally:
        execution.close()
    return ReplayCheck(run_id, name, "ok", versions=dict(execution.versions))


async def runs_on_old_branch(
    workflows: Any, backend: Backend, change_id: str, *, progress: Progress = _no_progress
) -> list[str]:
    """
    Unfinished runs for which ``Context.version(change_id)`` answered ``False``: they
    still take the old code path. When this is empty, the old branch (and the
    ``version`` call) can be deleted; runs that have not reached the call yet will
    take the new path.

    :param workflows: a :class:`~substantial.Conductor` or an iterable of workflows
    """
    checks = await check_replay(workflows, backend, progress=progress)
    return [check.run_id for check in checks if check.versions.get(change_id) is False]


# ---- garbage collection ----


@dataclass(frozen=True)
class GcResult:
    """
    What :func:`gc` deleted, or would delete.

    :ivar runs: the runs deleted (or, on a dry run, that would be)
    :ivar keys: how many keys that is (run and schedule keys; leases not counted)
    :ivar busy: finished runs left alone because an agent held their lease
    :ivar dry_run: whether nothing was deleted
    :ivar live: runs left alone because their summary says finished and their log does not
    """

    runs: list[str] = field(default_factory=list)
    keys: int = 0
    busy: list[str] = field(default_factory=list)
    dry_run: bool = False
    live: list[str] = field(default_factory=list)


async def gc(
    backend: Backend,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Progress = _no_progress,
) -> GcResult:
    """
    Delete finished runs (completed, failed, cancelled, reverted) whose summary was last
    written more than ``older_than`` ago: every key under ``runs/{run}/``, their schedule
    entries and their lease. A run is deleted only if its *log* ends in a terminal event
    (its last segment is read): a summary that says finished is not enough.

    Each run is deleted under a lease taken as ``gc``, so no agent works on it meanwhile;
    its summary goes last, so an interrupted gc is finished by the next one.

    :param older_than: minimum age of the run's last update
    :param dry_run: only report what would be deleted
    :param now: the current time (default: the wall clock)
    :param progress: called with the number of runs handled and the total
    :raises BackendUnavailable: if the storage cannot be reached
    """
    cutoff = (now or datetime.now(UTC)) - older_than
    summaries = await list_runs(backend)
    old = [
        s.run_id
        for s in summaries
        if s.status.finished and s.updated is not None and s.updated < cutoff
    ]
    if not old:
        progress(0, 0)
        return GcResult(dry_run=dry_run)
    wanted = set(old)
    scheduled: dict[str, list[str]] = {}
    for key in await backend.list_all(SCHEDULE_PREFIX):
        entry = ScheduleEntry.parse(key)
        if entry is not None and entry.run_id in wanted:
            scheduled.setdefault(entry.run_id, []).append(key)
    store = RunStore(backend)
    owner = f"gc:{socket.gethostname()}:{os.getpid()}"
    deleted: list[str] = []
    busy: list[str] = []
    live: list[str] = []
    keys = 0
    for done, run_id in enumerate(old, start=1):
        run_keys = await backend.list_all(f"{RUNS_PREFIX}{run_id}/")
        schedule_keys = scheduled.get(run_id, [])
        if not await hints.last_segment_ends(backend, run_id, run_keys):
            live.append(run_id)
        elif dry_run:
            keys += len(run_keys) + len(schedule_keys)
            deleted.append(run_id)
        else:
            lease = await store.acquire(run_id, owner, _GC_LEASE_MS)
            if lease is None:
                busy.append(run_id)
            else:
                meta = f"{RUNS_PREFIX}{run_id}/meta"
                await _delete_all(backend, schedule_keys)
                await _delete_all(backend, [key for key in run_keys if key != meta])
                await _delete_all(backend, [key for key in run_keys if key == meta])
                await backend.delete(lease_key(run_id), lease.version)
                keys += len(run_keys) + len(schedule_keys)
                deleted.append(run_id)
        progress(done, len(old))
    return GcResult(runs=deleted, keys=keys, busy=busy, dry_run=dry_run, live=live)


async def _delete_all(backend: Backend, keys: Sequence[str]) -> None:
    for start in range(0, len(keys), _DELETE_BATCH):
        async with anyio.create_task_group() as tg:
            for key in keys[start : start + _DELETE_BATCH]:
                tg.start_soon(backend.delete, key)
