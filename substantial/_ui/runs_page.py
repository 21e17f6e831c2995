"""The runs list: filters from the query string, counts by status, one page of rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from substantial._core.attributes import parse_where
from substantial._core.status import RunStatus
from substantial._ops.search import matches_where
from substantial._ui.snapshot import Snapshot
from substantial._ui.text import doing, run_duration
from substantial.errors import InvalidAttribute
from substantial.ops import RunSummary

__all__ = ["PAGE_SIZE", "Filters", "Row", "RunsPage", "runs_page"]

PAGE_SIZE = 50

#: the time-range choices of the filter form: label, and how far back
RANGES: dict[str, timedelta | None] = {
    "": None,
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


@dataclass(frozen=True)
class Filters:
    """What the runs page shows; every field comes from the query string."""

    statuses: tuple[RunStatus, ...] = ()
    workflow: str = ""
    since: str = ""
    started_after: datetime | None = None
    started_before: datetime | None = None
    prefix: str = ""
    page: int = 1
    #: search attributes, as ``name=value`` (``Context.set_attributes``)
    where: str = ""
    queue: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, list[str]]) -> Filters:
        """Read filters leniently: a value that makes no sense is ignored, not an error."""

        def one(name: str) -> str:
            values = query.get(name) or [""]
            return values[-1].strip()

        known = {status.value: status for status in RunStatus}
        statuses = tuple(known[v] for v in query.get("status", []) if v in known)
        since = one("since") if one("since") in RANGES else ""
        page = int(one("page")) if one("page").isdigit() else 1
        return cls(
            statuses=statuses,
            workflow=one("workflow"),
            since=since,
            started_after=_time(one("after")),
            started_before=_time(one("before")),
            prefix=one("prefix"),
            page=max(page, 1),
            where=one("where") if _where(one("where")) is not None else "",
            queue=one("queue"),
        )

    def query(self, **changes: object) -> str:
        """This filter's query string, with ``changes`` (``page=2``, ``status=None``)."""
        fields: dict[str, object] = {
            "status": [s.value for s in self.statuses],
            "workflow": self.workflow,
            "since": self.since,
            "after": self.started_after.isoformat() if self.started_after else "",
            "before": self.started_before.isoformat() if self.started_before else "",
            "prefix": self.prefix,
            "where": self.where,
            "queue": self.queue,
            "page": self.page if self.page > 1 else "",
        }
        fields.update(changes)
        pairs: list[tuple[str, str]] = []
        for name, value in fields.items():
            for item in value if isinstance(value, list) else [value]:
                if item not in ("", None):
                    pairs.append((name, str(item)))
        return urlencode(pairs)

    def selects(self, run: RunSummary, now: datetime, *, status: bool = True) -> bool:
        """Whether ``run`` passes every filter (``status=False``: all but the status)."""
        if status and self.statuses and run.status not in self.statuses:
            return False
        if self.workflow and run.workflow != self.workflow:
            return False
        if self.prefix and not run.run_id.startswith(self.prefix):
            return False
        if self.queue and run.queue != self.queue:
            return False
        wanted = _where(self.where)
        if wanted and not matches_where(run.attributes, wanted):
            return False
        after = self.started_after
        back = RANGES.get(self.since)
        if back is not None:
            after = max(after, now - back) if after else now - back
        if after is not None and (run.created is None or run.created < after):
            return False
        before = self.started_before
        return before is None or (run.created is not None and run.created < before)

    @property
    def narrowed(self) -> bool:
        """Whether any filter is set (cancel-selected needs one)."""
        return bool(self.statuses or self.workflow or self.prefix or self.since or self.queue
                    or self.started_after or self.started_before or self.where)  # fmt: skip


def _where(text: str) -> dict[str, str] | None:
    """``customer=acme region=eu`` as filters; None if it is not that shape."""
    try:
        return parse_where(text.split()) if text else {}
    except InvalidAttribute:
        return None


def _time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    run: RunSummary
    doing: str
    duration: float | None


@dataclass(frozen=True)
class RunsPage:
    """
    :ivar rows: this page's runs, newest first
    :ivar counts: runs by status among those the other filters select
    :ivar matching: how many runs every filter selects
    :ivar workflows: every workflow name seen, for the filter's choices
    :ivar queues: every queue name seen, for the filter's choices
    """

    filters: Filters
    rows: list[Row]
    counts: dict[str, int]
    total: int
    matching: int
    pages: int
    workflows: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    snapshot: Snapshot = field(default_factory=Snapshot)


def runs_page(snapshot: Snapshot, filters: Filters, now: datetime) -> RunsPage:
    """One page of the runs ``filters`` select, from a snapshot of every summary."""
    counts: Counter[str] = Counter()
    chosen: list[RunSummary] = []
    for run in snapshot.runs:
        if not filters.selects(run, now, status=False):
            continue
        counts[run.status.value] += 1
        if not filters.statuses or run.status in filters.statuses:
            chosen.append(run)
    pages = max(1, -(-len(chosen) // PAGE_SIZE))
    page = min(filters.page, pages)
    shown = chosen[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    return RunsPage(
        filters=filters if page == filters.page else _with_page(filters, page),
        rows=[Row(run, doing(run, now), run_duration(run, now)) for run in shown],
        counts={s.value: counts[s.value] for s in RunStatus if counts[s.value]},
        total=sum(counts.values()),
        matching=len(chosen),
        pages=pages,
        workflows=sorted({run.workflow for run in snapshot.runs if run.workflow}),
        queues=sorted({run.queue for run in snapshot.runs}),
        snapshot=snapshot,
    )


def selected_runs(snapshot: Snapshot, filters: Filters, now: datetime) -> list[RunSummary]:
    """Every unfinished run ``filters`` select, on every page: what cancel-selected cancels."""
    return [run for run in snapshot.runs if filters.selects(run, now) and not run.status.finished]


def _with_page(filters: Filters, page: int) -> Filters:
    from dataclasses import replace

    return replace(filters, page=page)
