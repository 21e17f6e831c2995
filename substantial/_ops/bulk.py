"""
Acting on many runs at once: the runs a filter selects, read from their summaries a
page at a time (never their logs), and an action applied to each, with a count of what
it did.

The actions are ``cancel``, ``terminate`` and ``retry``; :data:`ACTIONS` maps each name
to what it does to one run, so another action (``pause``, ``resume``) is one entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from substantial._client.handle import Handle
from substantial._core.status import RunStatus
from substantial._ops.listing import PAGE, Progress, RunSummary, _matches, _summaries, iter_run_ids
from substantial.backends.base import Backend
from substantial.errors import BackendError, ForkError, RunFinished, SubstantialError

__all__ = ["ACTIONS", "BulkResult", "RunFilter", "bulk", "iter_runs"]

#: Runs acted on at once.
CONCURRENCY = 16


@dataclass(frozen=True)
class RunFilter:
    """
    Which runs a bulk action or :func:`iter_runs` selects: those matching every field set.

    :ivar workflow: a workflow name
    :ivar status: one status or several
    :ivar started_before: started before this time
    :ivar started_after: started at or after this time
    """

    workflow: str | None = None
    status: RunStatus | Iterable[RunStatus] | None = None
    started_before: datetime | None = None
    started_after: datetime | None = None

    def statuses(self) -> set[RunStatus] | None:
        if self.status is None:
            return None
        return {self.status} if isinstance(self.status, RunStatus) else set(self.status)


async def iter_runs(
    backend: Backend, where: RunFilter = RunFilter(), *, page: int = PAGE
) -> AsyncIterator[RunSummary]:
    """
    The summaries of the runs ``where`` selects, in run id order, reading ``page`` runs'
    summaries per round (a missing or torn summary is rebuilt from that run's log).
    """
    statuses = where.statuses()
    batch: list[str] = []

    async def matching() -> list[RunSummary]:
        found = [
            summary
            for summary in await _summaries(backend, batch)
            if summary is not None
            and _matches(summary, where.workflow, statuses, where.started_before,
                         where.started_after)
        ]  # fmt: skip
        batch.clear()
        return found

    async for run_id in iter_run_ids(backend, page=page):
        batch.append(run_id)
        if len(batch) >= page:
            for summary in await matching():
                yield summary
    for summary in await matching():
        yield summary


@dataclass
class BulkResult:
    """
    What a bulk action did, or (``dry_run``) would do.

    :ivar action: ``cancel``, ``terminate`` or ``retry``
    :ivar selected: the runs the filter selected, in run id order
    :ivar done: the runs it acted on (retry: each with its fork's run id)
    :ivar skipped: runs left alone, each with why (it had ended; it had not failed)
    :ivar errors: runs it could not act on, each with the error
    """

    action: str
    dry_run: bool = False
    selected: list[str] = field(default_factory=list)
    done: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


#: ``action(handle, reason) -> what to report`` for one run.
Action = Callable[[Handle[Any], str], Awaitable[str]]


async def _cancel(handle: Handle[Any], reason: str) -> str:
    await handle.cancel()
    return ""


async def _terminate(handle: Handle[Any], reason: str) -> str:
    await handle.terminate(reason)
    return ""


async def _retry(handle: Handle[Any], reason: str) -> str:
    return (await handle.retry()).run_id


ACTIONS: dict[str, Action] = {"cancel": _cancel, "terminate": _terminate, "retry": _retry}


async def bulk(
    backend: Backend,
    handle: Callable[[str], Handle[Any]],
    action: str,
    where: RunFilter,
    *,
    reason: str = "",
    dry_run: bool = False,
    progress: Progress | None = None,
    selecting: Progress | None = None,
) -> BulkResult:
    """
    Apply ``action`` to every run ``where`` selects, :data:`CONCURRENCY` at a time. A run
    that ended meanwhile, or (retry) has not failed, is skipped with the reason; any
    other error of one run is kept in ``errors`` and the rest go on. Trouble with the
    store as a whole is raised.

    :param handle: makes a handle for a run id (``Conductor.handle``)
    :param reason: for ``terminate``: kept in each run's log
    :param progress: ``progress(done, total)`` as runs are acted on
    :param selecting: ``selecting(read, None)`` as runs are selected
    """
    act = ACTIONS[action]
    result = BulkResult(action, dry_run)
    async for summary in iter_runs(backend, where):
        result.selected.append(summary.run_id)
        if selecting is not None:
            selecting(len(result.selected), None)
    if dry_run:
        return result
    total, finished = len(result.selected), 0
    queue = iter(result.selected)  # shared by the workers: each run is taken once

    async def worker() -> None:
        nonlocal finished
        for run_id in queue:
            try:
                result.done[run_id] = await act(handle(run_id), reason)
            except RunFinished as exc:
                result.skipped[run_id] = f"it had ended ({exc.status})"
            except ForkError as exc:
                result.skipped[run_id] = exc.reason
            except BackendError:
                raise
            except SubstantialError as exc:
                result.errors[run_id] = str(exc)
            finished += 1
            if progress is not None:
                progress(finished, total)

    async with anyio.create_task_group() as tg:
        for _ in range(min(CONCURRENCY, total)):
            tg.start_soon(worker)
    return result
