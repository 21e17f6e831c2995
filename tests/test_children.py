"""
Child runs: ``child()`` returns the child's result or raises its error, ``start_child``
returns a handle to await later, children end with their parent unless detached, and a
parent fans out to many children and gathers their results.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from substantial import (
    Conductor,
    Context,
    RunCancelled,
    RunFailed,
    RunStatus,
    workflow,
)
from substantial.backends import MemoryBackend
from tests.harness import WAIT, make_conductor, wait_for_status


@workflow(name="children.double")
async def double(c: Context, i: int) -> int:
    if i < 0:
        raise ValueError(f"no negative numbers: {i}")
    return await c.save(lambda: 2 * i)


@workflow(name="children.waiter")
async def waiter(c: Context) -> str:
    return str(await c.receive("go"))


@workflow(name="children.parent")
async def parent(c: Context) -> dict[str, Any]:
    """A child awaited at once, one started and awaited later, one that fails."""
    later = await c.start_child(double, 5, run_id=f"{c.run_id}-later")
    first = await c.child(double, 1)
    try:
        await c.child(double, -1)
    except RunFailed as exc:
        failure = {"type": exc.type_name, "run_id": exc.run_id, "message": exc.error_message}
    return {"first": first, "later": await later.result(), "failure": failure}


@workflow(name="children.fan")
async def fan(c: Context, n: int) -> int:
    results = await asyncio.gather(*(c.child(double, i) for i in range(n)))
    assert results == [2 * i for i in range(n)]  # each result in its own place
    return sum(results)


@workflow(name="children.holder")
async def holder(c: Context) -> None:
    """Starts an attached and a detached waiter, then waits for ever."""
    await c.start_child(waiter, run_id=f"{c.run_id}-attached")
    await c.start_child(waiter, run_id=f"{c.run_id}-detached", detached=True)
    await c.receive("never")


WORKFLOWS = (double, waiter, parent, fan, holder)
pytestmark = pytest.mark.conductor(*WORKFLOWS, concurrency=16)


async def test_children_give_their_results_and_their_errors(conductor: Conductor) -> None:
    handle = await conductor.start(parent, run_id="p")
    result = await handle.result(timeout=WAIT)
    assert result["first"] == 2
    assert result["later"] == 10
    failed = result["failure"]
    assert failed["type"] == "ValueError"
    assert failed["message"] == "no negative numbers: -1"
    assert await conductor.handle(failed["run_id"]).status() is RunStatus.FAILED
    # the children are runs of their own, and the parent's log records them once each
    assert await conductor.handle("p-later").result(timeout=WAIT) == 10
    history = await handle.history()
    started = [e.details["run_id"] for e in history if e.kind == "child_started"]
    ended = [e.details["run_id"] for e in history if e.kind == "child_ended"]
    assert len(started) == 3
    assert len(set(started)) == 3
    assert sorted(ended) == sorted(started)
    assert started[0] == "p-later"
    # the child's own log names its parent
    child_start = (await conductor.handle("p-later").history())[0]
    assert child_start.details["parent_run_id"] == "p"


async def test_cancelling_a_parent_cancels_its_children_but_not_detached_ones(
    conductor: Conductor,
) -> None:
    handle = await conductor.start(holder, run_id="h")
    attached = conductor.handle("h-attached")
    detached = conductor.handle("h-detached")
    await wait_for_status(handle, RunStatus.WAITING)
    await wait_for_status(attached, RunStatus.WAITING)
    await wait_for_status(detached, RunStatus.WAITING)
    await handle.cancel()
    with pytest.raises(RunCancelled):
        await handle.result(timeout=WAIT)
    with pytest.raises(RunCancelled):
        await attached.result(timeout=WAIT)
    assert await attached.status() is RunStatus.CANCELLED
    # the detached child lives on and completes when its event comes
    assert await detached.status() is RunStatus.WAITING
    await detached.send("go", "still here")
    assert await detached.result(timeout=WAIT) == "still here"


async def test_a_fan_out_of_twenty_children_fans_in(conductor: Conductor) -> None:
    handle = await conductor.start(fan, 20, run_id="fan-20")
    assert await handle.result(timeout=WAIT) == sum(2 * i for i in range(20))
    kinds = [event.kind for event in await handle.history()]
    assert kinds.count("child_started") == 20
    assert kinds.count("child_ended") == 20


@pytest.mark.anyio
async def test_a_fan_out_of_a_thousand_children_on_memory() -> None:
    backend = MemoryBackend()
    async with make_conductor(backend, *WORKFLOWS, concurrency=64) as conductor:
        handle = await conductor.start(fan, 1000, run_id="fan-1000")
        assert await handle.result(timeout=90) == sum(2 * i for i in range(1000))
        kinds = [event.kind for event in await handle.history()]
    assert kinds.count("child_started") == 1000
    assert kinds.count("child_ended") == 1000
