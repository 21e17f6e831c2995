"""
The agent and the client on trio: every primitive, end to end, on the backends whose
client libraries run on trio (memory and files; redis-py and aiobotocore are asyncio
libraries, so the Redis and S3 backends need asyncio).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from substantial import Conductor, Context, RetryPolicy, RunCancelled, StepFailed, workflow
from substantial.backends import Backend, FSBackend, MemoryBackend
from substantial.testing import WorkflowEnvironment


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture(params=["memory", "files"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    store: Backend = MemoryBackend() if request.param == "memory" else FSBackend(tmp_path)
    try:
        yield store
    finally:
        await store.aclose()


attempts = {"flaky": 0}


@workflow(name="trio.child")
async def child(c: Context, x: int) -> int:
    return await c.save(lambda: x + 1)


@workflow(name="trio.everything")
async def everything(c: Context, x: int) -> dict[str, object]:
    def blocking() -> int:
        time.sleep(0.01)  # a sync step: runs in a worker thread
        return x * 2

    async def flaky() -> str:
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise ConnectionError("try again")
        return "ok"

    async def broken() -> None:
        raise ValueError("never works")

    doubled = await c.save(blocking)
    retried = await c.save(flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
    try:
        await c.save(broken)
    except StepFailed as failure:
        failed = failure.type_name
    await c.sleep(timedelta(milliseconds=20))
    by = await c.receive("by")
    try:
        got_late = await c.receive("late", timeout=timedelta(milliseconds=20))
    except TimeoutError:
        got_late = "timed out"
    kid = await c.child(child, doubled)
    return {"r": doubled * by, "retried": retried, "failed": failed, "late": got_late, "kid": kid}


@workflow(name="trio.forever")
async def forever(c: Context) -> None:
    await c.receive("never")


async def test_every_primitive_runs_on_trio(backend: Backend) -> None:
    attempts["flaky"] = 0
    async with Conductor(backend, poll_interval=0.05) as conductor:
        conductor.register(everything, child)
        handle = await conductor.start(everything, 21)
        await handle.send("by", 2)
        assert await handle.result(timeout=30) == {
            "r": 84,
            "retried": "ok",
            "failed": "ValueError",
            "late": "timed out",
            "kid": 43,
        }
        assert attempts["flaky"] == 3


async def test_cancel_and_result_timeout_on_trio(backend: Backend) -> None:
    async with Conductor(backend, poll_interval=0.05) as conductor:
        conductor.register(forever)
        handle = await conductor.start(forever)
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.1)
        await handle.cancel()
        with pytest.raises(RunCancelled):
            await handle.result(timeout=30)


@workflow(name="trio.month")
async def month(c: Context) -> str:
    await c.sleep(timedelta(days=30))
    return "later"


async def test_the_virtual_clock_environment_runs_on_trio() -> None:
    async with WorkflowEnvironment(month) as env:
        handle = await env.start(month)
        with anyio.fail_after(10):
            assert await handle.result() == "later"
