"""
Acting on many runs at once: the runs a filter selects, read from their summaries a
page at a time (never their logs: :func:`substantial._ops.listing.iter_runs`), and an
action applied to each, with a count of what it did.

The actions are ``cancel``, ``terminate`` and ``retry``; :data:`ACTIONS` maps each name
to what it does to one run, so another action (``pause``, ``resume``) is one entry.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from substantial._client.handle import Handle
from substantial._core.status import RunStatus
from substantial._ops.listing import Progress, RunSummary, iter_runs
from substantial.backends.base import Backend
from substantial.errors import BackendError, ForkError, RunFinished, SubstantialError

__all__ = ["ACTIONS", "BulkResult", "RunFilter", "bulk"]

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

    def select(self, backend: Backend) -> AsyncGenerator[RunSummary, None]:
        """The summaries of the runs selected, in run id order, read a page at a time."""
        return iter_runs(
            backend, self.workflow, self.status, self.started_before, self.started_after
        )


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
    async with aclosing(where.select(backend)) as selected:
        async for summary in selected:
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
