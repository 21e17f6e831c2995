"""
A run's log drawn as a timeline: steps, timers and children as bars in lanes (things that
overlapped in time get lanes of their own), events as marks.

The log records when a step *ended* (and when each failed attempt ended, and when its
retry was due), not when it began. A step's first attempt is taken to begin when the
last thing it may have waited for was recorded: the latest outcome of an earlier
primitive, or an event, before its first record in the log, passing over outcomes
recorded after a later primitive had already shown up (those ran beside it: the steps of
one ``gather`` all begin where the ``gather`` began). Later attempts begin at their retry
time. Bars are therefore upper bounds on a step's length; timers, children and events
are drawn at their recorded times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from substantial._client.handle import HistoryEvent

__all__ = ["Bar", "Mark", "Timeline", "build_timeline", "ms_datetime"]

_OUTCOMES = ("step_completed", "timer_fired", "child_ended", "event_received", "started")


@dataclass
class Span:
    """One attempt of a step, or the whole of a timer or child: from, to (epoch ms)."""

    start: int
    end: int
    ok: bool = True
    note: str = ""


@dataclass
class Bar:
    """
    One primitive on the timeline.

    :ivar kind: ``step``, ``timer`` or ``child``
    :ivar spans: its attempts (a step), or its one span
    :ivar deadline: when a timer is due (epoch ms)
    :ivar open: still going when the log ends
    :ivar link: the run it names (a child)
    """

    kind: str
    position: int
    label: str
    spans: list[Span] = field(default_factory=list)
    deadline: int | None = None
    open: bool = False
    link: str = ""
    lane: int = 0
    failed: bool = False

    @property
    def start(self) -> int:
        return self.spans[0].start

    @property
    def end(self) -> int:
        return max(span.end for span in self.spans)


@dataclass(frozen=True)
class Mark:
    """An event that arrived, a cancellation, a version marker, the run's end: a moment."""

    at: int
    kind: str
    label: str


@dataclass
class Timeline:
    start: int
    end: int
    bars: list[Bar]
    marks: list[Mark]
    lanes: int

    def x(self, at: int) -> float:
        """Where ``at`` falls, in percent of the width."""
        width = max(self.end - self.start, 1)
        return round(100 * (at - self.start) / width, 3)

    def w(self, start: int, end: int) -> float:
        return max(round(self.x(end) - self.x(start), 3), 0.4)


def ms_datetime(ms: int) -> datetime:
    """An epoch-milliseconds time of the timeline as a UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(event: HistoryEvent) -> int:
    return int(event.at.timestamp() * 1000)


def _position(event: HistoryEvent, children: dict[str, int]) -> int | None:
    if event.kind == "child_ended":
        return children.get(str(event.details.get("run_id", "")))
    if event.kind in ("event_received", "started"):
        return None
    return int(event.details.get("position", 0))


def _starts(history: list[HistoryEvent], children: dict[str, int]) -> dict[int, int]:
    """When each positioned primitive may have begun (see the module's docstring)."""
    first: dict[int, int] = {}
    for index, event in enumerate(history):
        position = _position(event, children)
        if position is not None and event.kind != "child_ended":
            first.setdefault(position, index)
    begins: dict[int, int] = {}
    for position, index in first.items():
        begin = _ms(history[0])
        for before in range(index - 1, -1, -1):
            event = history[before]
            if event.kind not in _OUTCOMES:
                continue
            other = _position(event, children)
            if other is None or (other < position and _unblocked(first, position, before)):
                begin = _ms(event)
                break
        begins[position] = min(begin, _ms(history[index]))
    return begins


def _unblocked(first: dict[int, int], position: int, at: int) -> bool:
    """
    Whether nothing after ``position`` showed in the log before index ``at``. Positions
    are numbered in the order the workflow reached them, so a later one that showed
    earlier proves ``position`` had been reached by then: what ended at ``at`` ran beside
    it and did not hold it up.
    """
    return all(index > at for p, index in first.items() if p > position)


def build_timeline(history: list[HistoryEvent], now: datetime) -> Timeline:
    """Lay ``history`` out; a run still going ends its open bars at ``now``."""
    if not history:
        at = int(now.timestamp() * 1000)
        return Timeline(at, at, [], [], 0)
    children = {
        str(e.details.get("run_id", "")): int(e.details.get("position", 0))
        for e in history
        if e.kind == "child_started"
    }
    begins = _starts(history, children)
    finished = history[-1].kind in ("completed", "failed", "cancelled", "reverted",
                                    "continued_as", "terminated")  # fmt: skip
    end = _ms(history[-1]) if finished else max(int(now.timestamp() * 1000), _ms(history[-1]))
    bars: dict[int, Bar] = {}
    marks: list[Mark] = []
    for event in history:
        _apply(event, bars, marks, begins, children)
    for bar in bars.values():
        if bar.open:
            bar.spans[-1].end = max(bar.spans[-1].end, end)
    ordered = sorted(bars.values(), key=lambda bar: (bar.start, bar.position))
    first, last = _ms(history[0]), max(end, *(bar.end for bar in ordered), 0)
    return Timeline(first, last, ordered, marks, _lanes(ordered, first, last))


def _apply(
    event: HistoryEvent,
    bars: dict[int, Bar],
    marks: list[Mark],
    begins: dict[int, int],
    children: dict[str, int],
) -> None:
    d: dict[str, Any] = event.details
    at = _ms(event)
    kind = event.kind
    position = _position(event, children)
    if kind in ("step_attempt_failed", "step_completed"):
        assert position is not None
        bar = bars.get(position)
        if bar is None:
            bar = Bar("step", position, str(d.get("key") or d.get("name") or f"step {position}"))
            bar.spans.append(Span(begins.get(position, at), at))
            bars[position] = bar
        span = bar.spans[-1]
        span.end = at
        if kind == "step_attempt_failed":
            span.ok = False
            span.note = _failure(d.get("failure"))
            retry = int(d.get("retry_at_ms", at))
            bar.spans.append(Span(max(retry, at), max(retry, at)))
            bar.open = True
        else:
            bar.open = False
            bar.failed = "failure" in d
            span.ok = not bar.failed
            span.note = _failure(d.get("failure")) if bar.failed else ""
    elif kind == "timer_started" and position is not None:
        fire = int(d.get("fire_at_ms", at))
        bars[position] = Bar("timer", position, "timer", [Span(at, at)], deadline=fire, open=True)
    elif kind == "timer_fired" and position in bars:
        bars[position].spans[-1].end = at
        bars[position].open = False
    elif kind == "child_started" and position is not None:
        run_id = str(d.get("run_id", ""))
        label = f"child {d.get('workflow', '')} {run_id}".strip()
        bars[position] = Bar("child", position, label, [Span(at, at)], open=True, link=run_id)
    elif kind == "child_ended" and position in bars:
        bar = bars[position]
        bar.spans[-1].end = at
        bar.open = False
        bar.failed = "failure" in d or bool(d.get("cancelled"))
        bar.spans[-1].ok = not bar.failed
    elif kind == "event_received":
        marks.append(Mark(at, kind, f"event {d.get('name', '')}"))
    elif kind != "started":
        marks.append(Mark(at, kind, kind.replace("_", " ")))


def _failure(failure: Any) -> str:
    if isinstance(failure, dict):
        return f"{failure.get('type', '')}: {failure.get('message', '')}"
    return ""


#: about how much of the timeline's width one character of a label takes
LABEL_CHAR = 0.0055


def _lanes(bars: list[Bar], start: int, end: int) -> int:
    """
    Put each bar in the first lane free at its start; return how many lanes. A bar's
    label counts as part of it (after the bar's start, or before it near the right edge,
    as ``run.html`` draws it), so labels do not run over the next bar.
    """
    width = max(end - start, 1)
    ends: list[int] = []
    for bar in bars:
        label = int(len(bar.label) * LABEL_CHAR * width) + 1
        right_side = (bar.start - start) / width > 0.7
        since = bar.start - label if right_side else bar.start
        until = bar.end if right_side else max(bar.end, bar.start + label)
        for lane, busy_until in enumerate(ends):
            if busy_until <= since:
                bar.lane = lane
                ends[lane] = until
                break
        else:
            bar.lane = len(ends)
            ends.append(until)
    return len(ends)
