"""
Timeouts and cancellation: ``receive(timeout=)`` is a durable timer, ``save(timeout=)``
bounds one attempt, and ``Handle.cancel()`` raises ``CancelledError`` in the workflow so
its ``finally`` steps run durably before the run ends CANCELLED. Also ``Handle.query()``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from substantial import (
    Conductor,
    Context,
    Handle,
    RetryPolicy,
    RunCancelled,
    RunFailed,
    RunStatus,
    workflow,
)
from substantial.backends import Backend
from tests.agents import check_log
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until

calls: Counter[str] = Counter()


@workflow(name="timeouts.ask")
async def ask(c: Context, seconds: float) -> str:
    try:
        answer = await c.receive("answer", timeout=seconds)
    except TimeoutError:
        return "no answer"
    return f"answer {answer}"


@workflow(name="timeouts.slow_step")
async def slow_step(c: Context, attempts: int) -> str:
    async def sometimes_hangs() -> str:
        calls[c.run_id] += 1
        if calls[c.run_id] == 1:
            await anyio.Event().wait()  # the first attempt hangs: no one sets it
        return "done"

    retry = RetryPolicy(max_attempts=attempts, initial_interval=0.05)
    return await c.save(sometimes_hangs, timeout=0.2, retry=retry)


@workflow(name="timeouts.cleanup")
async def cleanup(c: Context) -> str:
    c.set_status("working")
    try:
        await c.receive("never")
    except asyncio.CancelledError:
        c.set_status("cancelled")
        raise
    finally:
        await c.sleep(0.05)  # a durable sleep while cleaning up: a new wake-up
        await c.save(lambda: calls.update([f"{c.run_id}:cleanup"]))
    return "not reached"


gates: dict[str, anyio.Event] = {}


@workflow(name="timeouts.long_step")
async def long_step(c: Context) -> str:
    async def blocked() -> str:
        gates["entered"].set()
        await gates["release"].wait()
        return "finished anyway"

    async def clean() -> str:
        gates["cleaned"].set()
        return "cleaned"

    try:
        return await c.save(blocked)
    finally:
        await c.save(clean)


@workflow(name="timeouts.stages")
async def stages(c: Context) -> str:
    await c.receive("one")
    c.set_status({"stage": 1})
    c.set_status({"stage": 2})  # the last value counts
    await c.receive("two")
    c.set_status("finished")
    return "done"


WORKFLOWS = (ask, slow_step, cleanup, long_step, stages)
pytestmark = pytest.mark.conductor(*WORKFLOWS)


async def kinds(handle: Handle[Any]) -> list[str]:
    return [event.kind for event in await handle.history()]


# ---- receive(timeout=) ----


async def test_a_receive_times_out_at_its_deadline(conductor: Conductor) -> None:
    handle = await conductor.start(ask, 0.2, run_id="ask-late")
    assert await handle.result(timeout=WAIT) == "no answer"
    recorded = await kinds(handle)
    assert recorded.count("timer_started") == 1
    assert recorded.count("timer_fired") == 1


@pytest.mark.real_clock  # the run must sit SLEEPING on its 30 s timer while the event comes
async def test_an_event_before_the_deadline_wins(conductor: Conductor) -> None:
    handle = await conductor.start(ask, 30, run_id="ask-early")
    await wait_for_status(handle, RunStatus.SLEEPING)  # waiting, with its timer set
    await handle.send("answer", 42)
    assert await handle.result(timeout=WAIT) == "answer 42"
    assert "timer_fired" not in await kinds(handle)


async def test_a_receive_timeout_is_durable_across_agent_restarts(backend: Backend) -> None:
    async with make_conductor(backend, *WORKFLOWS) as first:
        handle = await first.start(ask, 0.3, run_id="ask-restart")
        await wait_for_status(handle, RunStatus.SLEEPING)
    # no agent while the deadline passes
    meta = await first.store.read_meta("ask-restart")
    assert meta is not None
    assert meta.wake_at_ms > 0

    async def past_deadline() -> bool:
        return time.time() * 1000 > meta.wake_at_ms

    await wait_until(past_deadline, WAIT, "the deadline to pass")
    assert await handle.status() is RunStatus.SLEEPING
    async with make_conductor(backend, *WORKFLOWS) as second:
        assert await second.handle("ask-restart").result(timeout=WAIT) == "no answer"
    recorded = await kinds(handle)
    assert recorded.count("timer_fired") == 1
    assert "event_received" not in recorded


# ---- save(timeout=) ----


async def test_a_step_timeout_bounds_one_attempt(conductor: Conductor) -> None:
    calls.clear()
    handle = await conductor.start(slow_step, 2, run_id="slow-retried")
    assert await handle.result(timeout=WAIT) == "done"
    assert calls["slow-retried"] == 2
    failed = [e for e in await handle.history() if e.kind == "step_attempt_failed"]
    assert len(failed) == 1
    assert failed[0].details["failure"]["type"] == "TimeoutError"


async def test_a_step_that_times_out_on_its_last_attempt_fails(conductor: Conductor) -> None:
    calls.clear()
    handle = await conductor.start(slow_step, 1, run_id="slow-once")
    with pytest.raises(RunFailed) as caught:
        await handle.result(timeout=WAIT)
    assert caught.value.type_name == "substantial.errors.StepFailed"
    assert "TimeoutError" in caught.value.error_message
    assert calls["slow-once"] == 1


# ---- cancellation ----


async def test_cancelling_runs_the_finally_steps_then_ends_cancelled(
    conductor: Conductor,
) -> None:
    calls.clear()
    handle = await conductor.start(cleanup, run_id="cancel-me")
    await wait_for_status(handle, RunStatus.WAITING)
    assert await handle.query() == "working"
    await handle.cancel()
    with pytest.raises(RunCancelled):
        await handle.result(timeout=WAIT)
    assert await handle.status() is RunStatus.CANCELLED
    assert calls["cancel-me:cleanup"] == 1
    assert await handle.query() == "cancelled"  # the except block ran in the workflow
    history = await handle.history()
    recorded = [event.kind for event in history]
    assert recorded.count("cancel_requested") == 1
    assert recorded.count("step_completed") == 1  # the cleanup step, once
    assert recorded.index("cancel_requested") < recorded.index("step_completed")
    assert recorded[-1] == "cancelled"
    assert len({event.segment for event in history}) >= 3  # the cleanup spanned wake-ups
    await check_log(conductor.backend, "cancel-me")


async def test_a_cancel_reaches_a_workflow_whose_step_is_still_running(
    conductor: Conductor,
) -> None:
    """The cancellation is raised at the save in flight, the finally step runs while the
    step has not ended, and the step's late result is not recorded."""
    gates.update({name: anyio.Event() for name in ("entered", "release", "cleaned")})
    handle = await conductor.start(long_step, run_id="cancel-in-step")
    await gates["entered"].wait()
    await handle.cancel()
    with anyio.fail_after(WAIT):
        await gates["cleaned"].wait()  # before the step in flight returns
    gates["release"].set()
    with pytest.raises(RunCancelled):
        await handle.result(timeout=WAIT)
    history = await handle.history()
    completed = [e.details for e in history if e.kind == "step_completed"]
    assert [step["result"] for step in completed] == ["cleaned"]
    assert [e.kind for e in history][-1] == "cancelled"
    await check_log(conductor.backend, "cancel-in-step")


# ---- query() ----


async def test_query_returns_the_last_published_status_without_replaying(
    conductor: Conductor,
) -> None:
    handle = await conductor.start(stages, run_id="stages")
    await wait_for_status(handle, RunStatus.WAITING)
    assert await handle.query() is None  # nothing published yet
    await handle.send("one")

    async def at_stage_two() -> bool:
        return await handle.query() == {"stage": 2}

    await wait_until(at_stage_two, WAIT, "the run to publish stage 2")
    # a client with no agent and no workflow registered reads it: no replay involved
    reader = Conductor(conductor.backend)
    assert await reader.handle("stages").query() == {"stage": 2}
    await handle.send("two")
    assert await handle.result(timeout=WAIT) == "done"
    assert await reader.handle("stages").query() == "finished"
