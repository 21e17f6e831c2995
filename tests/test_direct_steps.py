"""
Sync step functions on asyncio take the direct path (a thread call whose end a loop
callback hands to the drive loop, no task per step): it must behave as the task path
does. Each test here runs on asyncio and on trio (the task path), with the same answers.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

from substantial import Context, RetryPolicy, RunCancelled, StepFailed, workflow
from substantial._core.status import RunStatus
from substantial.backends import MemoryBackend
from tests.harness import WAIT, make_conductor, wait_for_status


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


ASKED = contextvars.ContextVar("asked", default="unset")
RELEASE = threading.Event()


async def _later(value: int) -> int:
    return value * 2


def _hang() -> None:
    RELEASE.wait(WAIT)


@workflow(name="direct.values")
async def values(c: Context) -> list[Any]:
    plain = await c.save(lambda: 1)
    seen = await c.save(ASKED.get)
    return [plain, seen]


@workflow(name="direct.awaits")
async def awaits(c: Context) -> int:
    return await c.save(lambda: _later(21), timeout=WAIT)  # a sync function's coroutine


@workflow(name="direct.times_out")
async def times_out(c: Context) -> str:
    try:
        await c.save(_hang, timeout=0.05, retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
    except StepFailed as exc:
        return exc.type_name
    return "no timeout"


@workflow(name="direct.gathered")
async def gathered(c: Context) -> list[int]:
    barrier = threading.Barrier(3, timeout=WAIT)
    steps = (c.save(lambda i=i: barrier.wait() * 0 + i) for i in range(3))
    return list(await asyncio.gather(*steps))


@workflow(name="direct.cancelled")
async def cancelled(c: Context) -> None:
    await c.save(_hang)


ATTEMPTS: list[int] = []


def _flaky() -> int:
    ATTEMPTS.append(1)
    if len(ATTEMPTS) < 3:
        raise ValueError("not yet")
    return len(ATTEMPTS)


@workflow(name="direct.fails")
async def fails(c: Context) -> int:
    return await c.save(_flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0.01))


FLOWS = (values, awaits, times_out, gathered, cancelled, fails)


@pytest.mark.anyio
async def test_values_and_context_variables() -> None:
    ASKED.set("from the agent's context")
    async with make_conductor(MemoryBackend(), *FLOWS) as conductor:
        result = await (await conductor.start(values)).result(timeout=WAIT)
    assert result == [1, "from the agent's context"]


@pytest.mark.anyio
async def test_an_awaitable_a_sync_step_returns_is_awaited(anyio_backend: str) -> None:
    if anyio_backend == "trio":
        pytest.skip("trio's worker threads refuse a function that returns a coroutine")
    async with make_conductor(MemoryBackend(), *FLOWS) as conductor:
        assert await (await conductor.start(awaits)).result(timeout=WAIT) == 42


@pytest.mark.anyio
async def test_a_step_timeout_fails_each_attempt_with_timeout_error() -> None:
    async with make_conductor(MemoryBackend(), *FLOWS) as conductor:
        handle = await conductor.start(times_out)
        assert await handle.result(timeout=WAIT) == "TimeoutError"
        kinds = [event.kind for event in await handle.history()]
    assert kinds.count("step_attempt_failed") == 1


@pytest.mark.anyio
async def test_gathered_sync_steps_run_at_once() -> None:
    async with make_conductor(MemoryBackend(), *FLOWS) as conductor:
        assert await (await conductor.start(gathered)).result(timeout=WAIT) == [0, 1, 2]


@pytest.mark.anyio
async def test_retries_follow_the_policy() -> None:
    ATTEMPTS.clear()
    async with make_conductor(MemoryBackend(), *FLOWS) as conductor:
        assert await (await conductor.start(fails)).result(timeout=WAIT) == 3


@pytest.mark.anyio
async def test_a_cancel_reaches_a_run_whose_sync_step_hangs() -> None:
    RELEASE.clear()
    try:
        async with make_conductor(MemoryBackend(), *FLOWS) as conductor:
            handle = await conductor.start(cancelled)
            await wait_for_status(handle, RunStatus.RUNNING)  # the step has run 1 s
            await handle.cancel()
            with pytest.raises(RunCancelled):
                await handle.result(timeout=WAIT)
    finally:
        RELEASE.set()
