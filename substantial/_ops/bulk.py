"""
Acting on many runs at once: the runs a filter selects, read from their summaries a
page at a time (never their logs: :func:`substantial._ops.listing.iter_runs`), and an
action applied to each, with a count of what it did.

The actions are ``cancel``, ``terminate``, ``retry``, ``pause`` and ``resume``;
:data:`ACTIONS` maps each name to what it does to one run, so another action is one
entry.
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
    :ivar queue: of this queue (``"default"``: runs given none)
    """

    workflow: str | None = None
    status: RunStatus | Iterable[RunStatus] | None = None
    started_before: datetime | None = None
    started_after: datetime | None = None
    queue: str | None = None

    def select(self, backend: Backend) -> AsyncGenerator[RunSummary, None]:
        """The summaries of the runs selected, in run id order, read a page at a time."""
        return iter_runs(
            backend,
            self.workflow,
            self.status,
            self.started_before,
            self.started_after,
            queue=self.queue,
        )


@dataclass
class BulkResult:
    """
    What a bulk action did, or (``dry_run``) would do.

    :ivar action: a name in :data:`ACTIONS`
    :ivar selected: the runs the filter selected, in run id order
    :ivar done: the runs it acted on (retry: each with its fork's run id)
    :ivar skipped: runs left alone, each with why (it had ended; it had not failed; it
        was paused already, or not paused)
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


class _Skip(Exception):
    """An action leaves this run alone; the message says why."""


async def _pause(handle: Handle[Any], reason: str) -> str:
    if await handle.status() is RunStatus.PAUSED:
        raise _Skip("it is paused already")
    await handle.pause()
    return ""


async def _resume(handle: Handle[Any], reason: str) -> str:
    status = await handle.status()
    if not status.finished and status is not RunStatus.PAUSED:
        raise _Skip(f"it is not paused (it is {status.value})")
    await handle.resume()  # an ended run: RunFinished, skipped as for the others
    return ""


ACTIONS: dict[str, Action] = {
    "cancel": _cancel,
    "terminate": _terminate,
    "retry": _retry,
    "pause": _pause,
    "resume": _resume,
}


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
    that ended meanwhile, or (retry) has not failed, or (pause) is paused already, or
    (resume) is not paused, is skipped with the reason; any
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
            except _Skip as exc:
                result.skipped[run_id] = str(exc)
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
