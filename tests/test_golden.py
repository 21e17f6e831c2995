"""
Committed event logs (tests/golden/) must replay on every change: runs in the wild were
recorded by older code, and the wire format and the engine must keep reading them.
Re-record deliberately with `python -m tests.golden_workflows`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from substantial import Context, NonDeterminismError, workflow
from substantial._engine.replay import Execution
from substantial._engine.workflow import Workflow
from substantial.protocol import substantial_pb2 as pb
from tests.golden_workflows import GOLDEN, WORKFLOWS

BY_NAME = {wf.name: wf for wf in WORKFLOWS}


def _load(folder: Path) -> tuple[str, list[pb.Event]]:
    segments = [pb.Segment.FromString(path.read_bytes()) for path in sorted(folder.iterdir())]
    assert [segment.seq for segment in segments] == list(range(len(segments)))
    events = [event for segment in segments for event in segment.events]
    return segments[0].run_id, events


def _replay(run_id: str, wf: Workflow[Any], events: list[pb.Event]) -> Execution:
    execution = Execution(run_id, wf)
    try:
        execution.replay(events)
    finally:
        execution.close()
    return execution


@pytest.mark.parametrize("name", ["order", "retry", "cancel"])
def test_golden_log_replays_to_its_recorded_outcome(name: str) -> None:
    run_id, events = _load(GOLDEN / name)
    workflow_name = events[0].started.workflow
    execution = _replay(run_id, BY_NAME[workflow_name], events)
    assert execution.outcome is not None
    assert execution.outcome == events[-1]
    assert execution.new_events == []  # replay records nothing new


def test_golden_order_log_content() -> None:
    _, events = _load(GOLDEN / "order")
    kinds = [event.WhichOneof("kind") for event in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "completed"
    assert kinds.count("event_received") == 3
    assert {"timer_started", "timer_fired", "step_completed"} <= set(kinds)


def test_golden_log_with_changed_code_is_nondeterministic() -> None:
    run_id, events = _load(GOLDEN / "order")

    @workflow(name="golden.order")
    async def order_v2(c: Context, order_id: str, amount: int) -> None:
        await c.sleep(1)  # where the log holds the charge step

    with pytest.raises(NonDeterminismError) as caught:
        _replay(run_id, order_v2, events)
    message = str(caught.value)
    assert "at position 0" in message
    assert "a step result" in message
    assert "sleep(1s)" in message


def test_golden_log_with_renamed_step_is_nondeterministic() -> None:
    run_id, events = _load(GOLDEN / "retry")

    def other_step() -> str:
        return "ok"

    @workflow(name="golden.retry")
    async def retry_v2(c: Context) -> str:
        return str(await c.save(other_step))

    with pytest.raises(NonDeterminismError, match="'_flaky'"):
        _replay(run_id, retry_v2, events)
