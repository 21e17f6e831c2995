"""Replay logic: a recorded log replays to the same answer, and a changed workflow is caught."""

from __future__ import annotations

import asyncio

import pytest

from substantial import (
    Conductor,
    Context,
    NonDeterminismError,
    RunFailed,
    RunStatus,
    Workflow,
    workflow,
)
from substantial._core.clock import now_ms
from substantial._engine.replay import Execution
from substantial.backends import Backend, MemoryBackend
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, wait_for_status


@pytest.fixture
def backend() -> Backend:
    """Replay does not depend on storage: the conductor fixture runs on memory only here."""
    return MemoryBackend()


def step_a() -> str:
    return "a"


def step_b() -> str:
    return "b"


@workflow(name="replay.recorded")
async def recorded(c: Context) -> list[object]:
    a, b = await asyncio.gather(c.save(step_a), c.save(step_b))
    await c.sleep(0.05)
    got = await c.receive("go")
    return [a, b, got, c.random()]


async def recorded_log(conductor: Conductor) -> tuple[list[pb.Event], object]:
    conductor.register(recorded)
    w = await conductor.start(recorded)
    await w.send("go", 7)
    result = await w.result(timeout=WAIT)
    stored = await conductor.store.read_log(w.run_id)
    return stored.events, result


def replay(wf: Workflow[object], events: list[pb.Event]) -> Execution:
    execution = Execution("r1", wf)
    try:
        execution.replay(events)
        execution.go_live(now_ms())
    finally:
        execution.close()
    return execution


async def test_a_finished_log_replays_to_the_same_outcome_without_new_events(
    conductor: Conductor,
) -> None:
    events, result = await recorded_log(conductor)
    execution = replay(recorded, events)
    assert execution.take_new_events() == []
    assert execution.outcome == events[-1]
    assert execution.outcome.WhichOneof("kind") == "completed"
    assert result == ["a", "b", 7, result[3]]  # type: ignore[index]


async def test_each_prefix_of_the_log_replays_cleanly(conductor: Conductor) -> None:
    events, _ = await recorded_log(conductor)
    for end in range(1, len(events)):
        execution = Execution("r1", recorded)
        try:
            execution.replay(events[:end])
        finally:
            execution.close()


async def test_swapped_step_is_named_on_replay(conductor: Conductor) -> None:
    events, _ = await recorded_log(conductor)

    @workflow(name="replay.recorded")
    async def swapped(c: Context) -> list[object]:
        a, b = await asyncio.gather(c.save(step_b), c.save(step_a))
        await c.sleep(0.05)
        return [a, b, await c.receive("go")]

    with pytest.raises(NonDeterminismError) as info:
        replay(swapped, events)
    assert info.value.position in (0, 1)
    assert "step_a" in str(info.value)
    assert "step_b" in str(info.value)


async def test_workflow_that_ends_early_is_caught(conductor: Conductor) -> None:
    events, _ = await recorded_log(conductor)

    @workflow(name="replay.recorded")
    async def shorter(c: Context) -> list[object]:
        a, b = await asyncio.gather(c.save(step_a), c.save(step_b))
        return [a, b]

    with pytest.raises(NonDeterminismError) as info:
        replay(shorter, events)
    assert "already" in str(info.value)


async def test_asyncio_timers_in_workflow_code_fail_the_run(conductor: Conductor) -> None:
    @workflow(name="replay.asyncio.sleep")
    async def uses_asyncio(c: Context) -> None:
        await asyncio.sleep(1)

    conductor.register(uses_asyncio)
    w = await conductor.start(uses_asyncio)
    with pytest.raises(RunFailed) as info:
        await w.result(timeout=WAIT)
    assert info.value.type_name == "RuntimeError"
    assert "Context.sleep" in info.value.error_message


async def test_suspension_is_not_an_exception(conductor: Conductor) -> None:
    caught: list[str] = []

    @workflow(name="replay.suspend")
    async def catches(c: Context) -> str:
        try:
            value = await c.receive("go")
        except Exception as exc:  # must never see the engine's suspension
            caught.append(type(exc).__name__)
            raise
        return str(value)

    conductor.register(catches)
    w = await conductor.start(catches)
    await wait_for_status(w, RunStatus.WAITING)  # suspended at least once
    await w.send("go", "x")
    assert await w.result(timeout=WAIT) == "x"
    assert caught == []
