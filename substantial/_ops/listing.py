"""
Listing runs: one :class:`RunSummary` per run, read from its summary record, or rebuilt
from its log when the summary is missing or torn. A run whose log cannot be read even
from its first segment is listed as ``corrupt``, never skipped.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from substantial._core.attributes import AttributeValue, from_pb, parse_where
from substantial._core.status import STATUS_FROM_PB, RunStatus
from substantial._ops.search import search
from substantial._ops.values import safe_plain, time_of
from substantial._store import hints
from substantial._store.keys import (
    DEFAULT_QUEUE,
    RUNS_PREFIX,
    meta_key,
    past_run,
    run_id_of,
    segment_key,
)
from substantial._store.payloads import open_records
from substantial._store.runs import RunStore, check_run_id
from substantial.backends.base import Backend
from substantial.errors import CorruptLog, RunNotFound
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "Progress",
    "RunSummary",
    "get_run",
    "iter_run_ids",
    "iter_runs",
    "list_runs",
    "no_progress",
]

PAGE = 1000

#: ``progress(done, total)``; ``total`` is ``None`` while it is not known yet.
Progress = Callable[[int, int | None], None]


def no_progress(done: int, total: int | None) -> None:
    """The default ``progress``: report nothing."""


@dataclass(frozen=True)
class RunSummary:
    """
    One run as its summary record (``runs/{run}/meta``) describes it, or as its first
    log segment does when the summary is missing.

    :ivar run_id: the run's id
    :ivar workflow: the workflow's registered name
    :ivar status: where the run is (the summary is a hint written after each wake-up);
        ``corrupt`` if neither its summary nor its log can be read
    :ivar created: when it was started
    :ivar updated: when its summary was last written
    :ivar wake_at: when a sleeping run wakes, a waiting one times out, a parked one is
        retried
    :ivar args: the positional and keyword arguments, as plain data
    :ivar result: the result of a completed run, as plain data
    :ivar error: ``Type: message`` of a failed run, or of what makes a run corrupt
    :ivar parked_reason: why a parked run no longer replays
    :ivar custom_status: the last value the workflow gave ``Context.set_status()``
    :ivar waiting_for: what a waiting run waits for, e.g. ``event 'approve'``
    :ivar agent: the agent that last wrote the summary (``show`` names the lease holder)
    :ivar forked_from: the run this one is a fork of (``Handle.fork``, ``retry``), if any
    :ivar fork_step: the position that fork's log was cut at
    :ivar attributes: the run's search attributes (``Context.set_attributes()``)
    :ivar queue: the queue whose agents run it (``"default"`` unless it was given one)
    :ivar priority: its priority in that queue (0-9, higher first)
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
    custom_status: Any = None
    waiting_for: tuple[str, ...] = ()
    agent: str = ""
    forked_from: str = ""
    fork_step: int = 0
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = 0

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-compatible dict (times as ISO 8601 strings)."""

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "queue": self.queue,
            "status": self.status.value,
            "created": iso(self.created),
            "updated": iso(self.updated),
            "wake_at": iso(self.wake_at),
            "args": self.args,
            "result": self.result,
            "error": self.error or None,
            "parked_reason": self.parked_reason or None,
            "custom_status": self.custom_status,
            "waiting_for": list(self.waiting_for),
            "agent": self.agent or None,
            "attributes": self.attributes,
            "priority": self.priority,
            **({"forked_from": self.forked_from, "fork_step": self.fork_step}
               if self.forked_from else {}),
        }  # fmt: skip


def _summary(meta: pb.RunMeta) -> RunSummary:
    status = STATUS_FROM_PB.get(meta.status, RunStatus.PENDING)
    error = ""
    if meta.HasField("failure"):
        error = f"{meta.failure.type}: {meta.failure.message}"
    return RunSummary(
        run_id=meta.run_id,
        workflow=meta.workflow,
        status=status,
        created=time_of(meta.created_ms),
        updated=time_of(meta.updated_ms or meta.created_ms),
        wake_at=time_of(meta.wake_at_ms),
        args=safe_plain(meta.args) if meta.HasField("args") else None,
        result=safe_plain(meta.result) if meta.HasField("result") else None,
        error=error,
        parked_reason=meta.parked_reason,
        custom_status=safe_plain(meta.custom_status) if meta.HasField("custom_status") else None,
        waiting_for=tuple(meta.waiting_for),
        agent=meta.agent,
        forked_from=meta.forked_from,
        fork_step=meta.fork_step,
        attributes=from_pb(meta.attributes),
        queue=meta.queue or DEFAULT_QUEUE,
        priority=meta.priority,
    )


async def iter_run_ids(
    backend: Backend, *, after_run: str | None = None, page: int = PAGE
) -> AsyncGenerator[str, None]:
    """
    Every run id on the backend, in key order (after ``after_run``, if given). Lists
    ``runs/`` a page at a time and skips past the rest of the last run seen on each
    page, so a run with many log segments costs one request, not one per thousand.
    """
    after = None if after_run is None else past_run(check_run_id(after_run))
    last: str | None = None
    while True:
        keys = await backend.list(RUNS_PREFIX, after=after, limit=page)
        for key in keys:
            run_id = run_id_of(key)
            if run_id != last:
                last = run_id
                yield run_id
        if len(keys) < page or last is None:
            return
        after = past_run(last)


async def _summaries(
    backend: Backend, run_ids: Sequence[str], *, blobs: bool = False
) -> list[RunSummary | None]:
    """The runs' summaries; values in blobs are read only with ``blobs`` (one run shown)."""
    store = RunStore(backend)
    entries = await backend.get_many([meta_key(run_id) for run_id in run_ids])
    found: list[RunSummary | None] = []
    for run_id, entry in zip(run_ids, entries, strict=True):
        if entry is not None:
            try:
                meta = pb.RunMeta.FromString(entry[0])
                await open_records(backend, run_id, [meta], blobs=blobs)
                found.append(_summary(meta))
                continue
            except Exception:  # a torn summary: fall back to the log, the truth
                pass
        found.append(await _summary_from_log(store, run_id))
    return found


async def _summary_from_log(store: RunStore, run_id: str) -> RunSummary | None:
    """
    A run whose summary is missing (a start that died before writing it) or unreadable:
    rebuilt from its log, or, if the log cannot be read, from its start. A run whose
    start cannot be read either is ``corrupt``: shown, so an operator can see to it.

    :return: None if the run has no log at all
    """
    try:
        stored = await store.read_log(run_id)
    except CorruptLog as exc:
        error = exc
    else:
        return _summary(hints.summary_from_log(run_id, stored)) if stored.events else None
    try:
        entry = await store.backend.get(segment_key(run_id, 0))
        segment = pb.Segment.FromString(entry[0]) if entry is not None else None
    except Exception:  # unreadable too (a damaged log file on files raises CorruptLog)
        segment = None
    if segment is None or not segment.events or not segment.events[0].HasField("started"):
        return _corrupt(run_id, error)
    first = segment.events[0]
    return RunSummary(
        run_id=run_id,
        workflow=first.started.workflow,
        status=RunStatus.PENDING,
        created=time_of(first.at_ms),
        updated=time_of(first.at_ms),
        args=safe_plain(first.started.args),
        queue=first.started.queue or DEFAULT_QUEUE,
        priority=first.started.priority,
    )


def _corrupt(run_id: str, error: CorruptLog) -> RunSummary:
    return RunSummary(
        run_id=run_id,
        workflow="",
        status=RunStatus.CORRUPT,
        created=None,
        updated=None,
        error=f"{type(error).__name__}: {error}",
    )


async def list_runs(
    backend: Backend,
    workflow: str | None = None,
    status: RunStatus | Iterable[RunStatus] | None = None,
    started_before: datetime | None = None,
    started_after: datetime | None = None,
    *,
    queue: str | None = None,
    where: Mapping[str, object] | Iterable[str] | None = None,
    progress: Progress = no_progress,
) -> list[RunSummary]:
    """
    The runs on ``backend`` that match every filter given, oldest first.

    Enumerating runs lists every key under ``runs/`` (skipping long logs), which is fine
    for an operator command but not for a hot path.

    :param workflow: only runs of this workflow name
    :param status: only runs in this status (or one of these)
    :param started_before: only runs started before this time
    :param started_after: only runs started at or after this time
    :param queue: only runs of this queue (``"default"``: those given none)
    :param where: only runs with these search attributes, ``{"customer": "acme"}`` or
        ``["customer=acme"]`` (values compared as text); found through the attribute
        index, so only the matching runs' summaries are read
    :param progress: called with the number of runs read so far
    :raises InvalidAttribute: for a ``where`` condition that is not ``name=value``
    :raises BackendUnavailable: if the storage cannot be reached
    """
    if where is not None:
        wanted = (
            None if status is None else set([status] if isinstance(status, RunStatus) else status)
        )
        found = [
            summary
            for summary in await search(backend, parse_where(where), _summaries)
            if _matches(summary, workflow, wanted, started_before, started_after, queue)
        ]
        progress(len(found), len(found))
    else:
        found = [
            summary
            async for summary in iter_runs(
                backend,
                workflow,
                status,
                started_before,
                started_after,
                queue=queue,
                progress=progress,
            )
        ]
    epoch = datetime.fromtimestamp(0, UTC)
    found.sort(key=lambda s: (s.created or epoch, s.run_id))
    return found


async def iter_runs(
    backend: Backend,
    workflow: str | None = None,
    status: RunStatus | Iterable[RunStatus] | None = None,
    started_before: datetime | None = None,
    started_after: datetime | None = None,
    *,
    queue: str | None = None,
    after: str | None = None,
    read: int = PAGE,
    progress: Progress = no_progress,
) -> AsyncGenerator[RunSummary, None]:
    """
    The runs that match every filter given, in run-id order, read a page at a time: a
    cursor. Stopping early reads no further; ``after`` (a run id) starts past that run,
    so a page ends with the id that starts the next. Filters (``queue`` too) as
    :func:`list_runs`;
    ``read``: how many summaries to read at once.
    """
    wanted: set[RunStatus] | None = None
    if status is not None:
        wanted = {status} if isinstance(status, RunStatus) else set(status)
    batch: list[str] = []
    seen = 0
    async with aclosing(iter_run_ids(backend, after_run=after)) as ids:
        async for run_id in ids:
            batch.append(run_id)
            if len(batch) < read:
                continue
            for summary in await _matching(backend, batch, workflow, wanted, started_before,
                                           started_after, queue):  # fmt: skip
                yield summary
            seen += len(batch)
            progress(seen, None)
            batch = []
    last = await _matching(backend, batch, workflow, wanted, started_before, started_after, queue)
    for summary in last:
        yield summary
    progress(seen + len(batch), None)


async def _matching(
    backend: Backend,
    run_ids: list[str],
    workflow: str | None,
    wanted: set[RunStatus] | None,
    before: datetime | None,
    after: datetime | None,
    queue: str | None,
) -> list[RunSummary]:
    summaries = await _summaries(backend, run_ids) if run_ids else []
    return [
        s
        for s in summaries
        if s is not None and _matches(s, workflow, wanted, before, after, queue)
    ]


def _matches(
    summary: RunSummary,
    workflow: str | None,
    statuses: set[RunStatus] | None,
    before: datetime | None,
    after: datetime | None,
    queue: str | None = None,
) -> bool:
    if workflow is not None and summary.workflow != workflow:
        return False
    if queue is not None and summary.queue != queue:
        return False
    if statuses is not None and summary.status not in statuses:
        return False
    if before is not None and (summary.created is None or summary.created >= before):
        return False
    return not (after is not None and (summary.created is None or summary.created < after))


async def get_run(backend: Backend, run_id: str) -> RunSummary:
    """
    One run's summary.

    :raises RunNotFound: if the run has neither a summary nor a log
    """
    (summary,) = await _summaries(backend, [check_run_id(run_id)], blobs=True)
    if summary is None:
        raise RunNotFound(run_id)
    return summary
