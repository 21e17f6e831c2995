"""
Operator tooling over a backend, in one place: list runs, describe one, check that stored
logs still replay against the current code, and delete old finished runs. The
``substantial`` CLI presents these; they work the same from Python::

    runs = await list_runs(backend, status=RunStatus.PARKED)
    problems = [c for c in await check_replay(conductor, backend) if not c.ok]
    await gc(backend, timedelta(days=30), dry_run=True)

Values are shown without importing user code (:mod:`substantial._ops.values`). Each job
has its module: ``listing``, ``details``, ``replay_check`` and ``collection`` (gc).
"""

from __future__ import annotations

from substantial._ops.bulk import ACTIONS, BulkResult, RunFilter, bulk
from substantial._ops.collection import GcResult, gc
from substantial._ops.details import RunDetails, describe_run
from substantial._ops.listing import (
    Progress,
    RunSummary,
    get_run,
    iter_run_ids,
    iter_runs,
    list_runs,
)
from substantial._ops.replay_check import ReplayCheck, check_replay, runs_on_old_branch
from substantial._ops.values import plain_value

__all__ = [
    "ACTIONS",
    "BulkResult",
    "GcResult",
    "Progress",
    "ReplayCheck",
    "RunDetails",
    "RunFilter",
    "RunSummary",
    "bulk",
    "check_replay",
    "describe_run",
    "gc",
    "get_run",
    "iter_run_ids",
    "iter_runs",
    "list_runs",
    "plain_value",
    "runs_on_old_branch",
]
