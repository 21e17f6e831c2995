"""
The replay check, a deploy gate: replay stored logs against the current code and report
which runs would no longer replay, and which still take an old ``c.version`` branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from substantial._engine.replay import Execution
from substantial._engine.workflow import Workflow
from substantial._ops.listing import Progress, list_runs, no_progress
from substantial._store.runs import RunStore
from substantial.backends.base import Backend
from substantial.errors import CodecError, CorruptLog, NonDeterminismError

__all__ = ["ReplayCheck", "check_replay", "runs_on_old_branch"]


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
    progress: Progress = no_progress,
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
    workflows: Any, backend: Backend, change_id: str, *, progress: Progress = no_progress
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
