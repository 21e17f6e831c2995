"""One run: its summary, outcome, links to related runs, timeline and raw events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from substantial import ops
from substantial._client.handle import HistoryEvent
from substantial._core.status import RunStatus
from substantial._store.runs import RunStore
from substantial._ui.text import doing, time_text
from substantial._ui.timeline import Timeline, build_timeline, ms_datetime
from substantial.backends.base import Backend

__all__ = ["EVENTS_PER_PAGE", "Link", "RunPage", "load_run_page", "run_doing"]

EVENTS_PER_PAGE = 100


@dataclass(frozen=True)
class Link:
    label: str
    run_id: str


@dataclass(frozen=True)
class RunPage:
    """
    :ivar details: what :func:`substantial.ops.describe_run` reads
    :ivar traceback: a failed run's traceback, from its log
    :ivar links: parent, children, the runs before and after it in a ``continue_using`` chain
    :ivar events: this page of raw events, with their index in the log
    """

    details: ops.RunDetails
    timeline: Timeline
    traceback: str = ""
    links: list[Link] = field(default_factory=list)
    events: list[tuple[int, HistoryEvent]] = field(default_factory=list)
    events_page: int = 1
    events_pages: int = 1
    #: ``start(concurrency_key=...)``, from the run's start event
    concurrency_key: str = ""


async def load_run_page(
    backend: Backend,
    run_id: str,
    events_page: int,
    now: datetime,
    *,
    per_page: int = EVENTS_PER_PAGE,
) -> RunPage:
    """
    Read one run (its summary, log, inbox and lease: one run's keys, nothing else).

    :param events_page: which page of ``per_page`` raw events to show (from 1)

    :raises RunNotFound: if there is no such run
    :raises CorruptLog: if its log cannot be read
    """
    details = await ops.describe_run(backend, run_id)
    history = details.history
    pages = max(1, -(-len(history) // per_page))
    page = min(max(events_page, 1), pages)
    first = (page - 1) * per_page
    shown = list(enumerate(history))[first : first + per_page]
    return RunPage(
        details=details,
        timeline=build_timeline(history, now),
        traceback=await _traceback(backend, details) if history else "",
        links=_links(history),
        events=shown,
        events_page=page,
        events_pages=pages,
        concurrency_key=str(history[0].details.get("concurrency_key", "")) if history else "",
    )


async def _traceback(backend: Backend, details: ops.RunDetails) -> str:
    """The traceback of a failed run (``describe_run`` gives its type and message only)."""
    if details.history[-1].kind != "failed":
        return ""
    stored = await RunStore(backend).read_log(details.summary.run_id)
    end = stored.events[-1]
    return end.failed.failure.traceback if end.HasField("failed") else ""


def _links(history: list[HistoryEvent]) -> list[Link]:
    links: list[Link] = []
    started = history[0].details if history and history[0].kind == "started" else {}
    if started.get("parent_run_id"):
        links.append(Link("parent", str(started["parent_run_id"])))
    if started.get("continued_from"):
        links.append(Link("continued from", str(started["continued_from"])))
    if started.get("forked_from"):
        step = started.get("fork_step", 0)
        links.append(Link(f"forked from (before #{step})", str(started["forked_from"])))
    root = started.get("chain_root")
    if root and root != started.get("continued_from") and root != started.get("run_id"):
        links.append(Link("first of its chain", str(root)))
    for event in history:
        if event.kind == "child_started" and not event.details.get("id_taken"):
            links.append(Link("child", str(event.details.get("run_id", ""))))
        elif event.kind == "continued_as":
            links.append(Link("continued as", str(event.details.get("run_id", ""))))
    return links


def run_doing(run: ops.RunSummary, timeline: Timeline, now: datetime, key: str = "") -> str:
    """
    What the run is doing, told more closely than its summary alone can (``text.doing``):
    the step it is retrying and when, the child it waits for, or the concurrency key
    (``key``, from its start) a queued run counts under.
    """
    if run.status.finished:
        return doing(run, now)
    for bar in timeline.bars:
        if bar.kind == "step" and bar.open and len(bar.spans) > 1:
            due = time_text(ms_datetime(bar.spans[-1].start))
            return f"retrying {bar.label}: attempt {len(bar.spans)} at {due}"
    if run.status is RunStatus.QUEUED and key:
        return f"queued behind the concurrency limits of workflow {run.workflow} (key {key!r})"
    if run.status is RunStatus.WAITING:
        children = [bar.link for bar in timeline.bars if bar.kind == "child" and bar.open]
        if children:
            return "waiting for child run " + ", ".join(children)
    return doing(run, now)
