"""
How the web view lays a log out in time (``substantial/_ui/timeline.py``): the log holds
when steps ended, so when each began is inferred; these pin the inference on logs of
known shape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from substantial._client.handle import HistoryEvent
from substantial._ui.timeline import build_timeline

T0 = 1_800_000_000_000


def _event(ms: int, kind: str, **details: Any) -> HistoryEvent:
    return HistoryEvent(0, datetime.fromtimestamp((T0 + ms) / 1000, UTC), kind, details)


def _begins(history: list[HistoryEvent]) -> dict[int, tuple[int, int, int]]:
    timeline = build_timeline(history, datetime.fromtimestamp(T0 / 1000 + 60, UTC))
    return {bar.position: (bar.start - T0, bar.end - T0, bar.lane) for bar in timeline.bars}


def test_sequential_steps_begin_where_the_one_before_ended() -> None:
    history = [
        _event(0, "started"),
        _event(100, "step_completed", position=0),
        _event(300, "step_completed", position=1),
        _event(350, "step_completed", position=2),
        _event(2000, "completed"),  # the bars in the left part: labels drawn after them
    ]
    assert _begins(history) == {0: (0, 100, 0), 1: (100, 300, 0), 2: (300, 350, 0)}


def test_steps_of_a_gather_all_begin_together_in_lanes_of_their_own() -> None:
    history = [
        _event(0, "started"),
        _event(100, "step_completed", position=0),
        # positions 1, 2, 3 gathered: 3 ends first, then 1, then 2
        _event(300, "step_completed", position=3),
        _event(400, "step_completed", position=1),
        _event(600, "step_completed", position=2),
        _event(700, "step_completed", position=4),
    ]
    begins = _begins(history)
    assert {p: begins[p][:2] for p in (1, 2, 3)} == {1: (100, 400), 2: (100, 600), 3: (100, 300)}
    assert len({begins[p][2] for p in (1, 2, 3)}) == 3
    assert begins[4][:2] == (600, 700)  # after the gather: it waited for all three


def test_retries_timers_children_and_events() -> None:
    history = [
        _event(0, "started"),
        _event(
            100,
            "step_attempt_failed",
            position=0,
            attempt=1,
            retry_at_ms=T0 + 300,
            failure={"type": "ConnectionError", "message": "busy"},
        ),
        _event(400, "step_completed", position=0, attempts=2),
        _event(400, "timer_started", position=1, fire_at_ms=T0 + 1000),
        _event(1005, "timer_fired", position=1),
        _event(1010, "child_started", position=2, run_id="kid", workflow="w"),
        _event(1500, "event_received", name="go"),
        _event(2000, "child_ended", run_id="kid", result=1),
        _event(2000, "completed"),
    ]
    timeline = build_timeline(history, datetime.now(UTC))
    step, timer, child = sorted(timeline.bars, key=lambda bar: bar.position)
    assert [(s.start - T0, s.end - T0, s.ok) for s in step.spans] == [
        (0, 100, False),
        (300, 400, True),
    ]
    assert step.spans[0].note == "ConnectionError: busy"
    assert (timer.start - T0, timer.end - T0, timer.deadline) == (400, 1005, T0 + 1000)
    assert (child.kind, child.link, child.end - T0, child.open) == ("child", "kid", 2000, False)
    assert [(m.at - T0, m.label) for m in timeline.marks] == [
        (1500, "event go"),
        (2000, "completed"),
    ]


def test_a_step_still_retrying_stays_open_until_now() -> None:
    history = [
        _event(0, "started"),
        _event(100, "step_attempt_failed", position=0, attempt=1, retry_at_ms=T0 + 5000),
    ]
    now = datetime.fromtimestamp((T0 + 2000) / 1000, UTC)
    (bar,) = build_timeline(history, now).bars
    assert bar.open
    assert len(bar.spans) == 2
    assert bar.end == T0 + 5000


def test_a_label_counts_as_part_of_its_bar() -> None:
    history = [
        _event(0, "started"),
        _event(100, "step_completed", position=0, name="a" * 40),  # a label past 100 ms
        _event(150, "step_completed", position=1, name="b"),
        _event(1000, "completed"),
    ]
    begins = _begins(history)
    assert begins[1][:2] == (100, 150)
    assert begins[0][2] != begins[1][2], "step 1 would be drawn over step 0's label"


def test_a_run_page_says_which_step_it_retries_and_which_child_it_awaits() -> None:
    from substantial import RunStatus
    from substantial._ui.run_page import run_doing
    from substantial.ops import RunSummary

    now = datetime.fromtimestamp((T0 + 2000) / 1000, UTC)
    retrying = [
        _event(0, "started"),
        _event(
            100,
            "step_attempt_failed",
            position=0,
            attempt=1,
            retry_at_ms=T0 + 5000,
            name="charge_card",
        ),
    ]
    sleeping = RunSummary("r", "w", RunStatus.SLEEPING, None, None)
    said = run_doing(sleeping, build_timeline(retrying, now), now)
    assert said == "retrying charge_card: attempt 2 at 2027-01-15 08:00:05Z"
    awaiting = [_event(0, "started"), _event(10, "child_started", position=0, run_id="kid")]
    waiting = RunSummary("r", "w", RunStatus.WAITING, None, None)
    assert run_doing(waiting, build_timeline(awaiting, now), now) == "waiting for child run kid"
