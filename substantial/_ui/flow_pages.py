"""
What the flow-control pages show: cron schedules with their next ticks and last runs,
named step limits with their current use, and queues, paused or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from substantial._client.limits import LimitInfo
from substantial._client.schedules import ScheduleInfo
from substantial._conductor import Conductor
from substantial._store.keys import DEFAULT_QUEUE
from substantial._ui.snapshot import Snapshot
from substantial.backends.base import Backend
from substantial.errors import ScheduleNotFound
from substantial.ops import RunSummary

__all__ = [
    "LAST_RUNS",
    "NEXT_TICKS",
    "QueueRow",
    "ScheduleRow",
    "load_limits",
    "load_queues",
    "load_schedules",
]

#: how many next ticks and last runs the schedules page shows of each schedule
NEXT_TICKS = 5
LAST_RUNS = 5


@dataclass(frozen=True)
class ScheduleRow:
    """
    :ivar info: what ``Schedule.describe`` reports
    :ivar last_runs: its latest runs (tick runs ``{id}@...`` and triggered ones), newest first
    """

    info: ScheduleInfo
    last_runs: list[RunSummary] = field(default_factory=list)


@dataclass(frozen=True)
class QueueRow:
    name: str
    paused: bool
    #: runs of the queue in the snapshot that have not ended
    unfinished: int = 0


async def load_schedules(backend: Backend, snapshot: Snapshot) -> list[ScheduleRow]:
    """Every schedule, by id; its runs are found by their id in the snapshot of summaries."""
    rows = []
    for schedule in await Conductor(backend).schedules():
        try:
            info = await schedule.describe(ticks=NEXT_TICKS)
        except ScheduleNotFound:  # deleted meanwhile
            continue
        mine = [run for run in snapshot.runs if run.run_id.startswith(f"{info.id}@")]
        mine.sort(key=lambda run: (run.created is not None, run.created), reverse=True)
        rows.append(ScheduleRow(info, mine[:LAST_RUNS]))
    return rows


async def load_limits(backend: Backend) -> list[LimitInfo]:
    """Every named step limit with its current use (as ``substantial limits`` shows)."""
    return await Conductor(backend).limits()


async def load_queues(
    backend: Backend, snapshot: Snapshot, schedules: list[ScheduleRow]
) -> list[QueueRow]:
    """
    The queues the runs and schedules name (and ``default``), each paused or not. A
    queue paused by name with no run or schedule yet is not among them; the page's form
    reaches any queue.
    """
    unfinished: dict[str, int] = {DEFAULT_QUEUE: 0}
    for run in snapshot.runs:
        unfinished.setdefault(run.queue, 0)
        if not run.status.finished:
            unfinished[run.queue] += 1
    for row in schedules:
        unfinished.setdefault(row.info.queue, 0)
    conductor = Conductor(backend)
    return [
        QueueRow(name, await conductor.queue_paused(name), count)
        for name, count in sorted(unfinished.items())
    ]
