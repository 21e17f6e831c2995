"""
Sync steps run on a pool of daemon threads. A step given up on (its timeout passed, its
run was cancelled) may block for ever: its thread must not count against the pool, or
enough hung steps would starve every other run of the agent.
"""

from __future__ import annotations

import threading

import pytest

from substantial import Context, RetryPolicy, RunFailed, workflow
from substantial._agent.step_threads import DaemonThreadPool
from substantial.backends import MemoryBackend
from tests.harness import WAIT, make_conductor

STUCK = threading.Event()


def test_calls_given_up_on_leave_the_pool_free() -> None:
    pool = DaemonThreadPool(max_workers=2)
    release = threading.Event()
    started = threading.Semaphore(0)

    def hang() -> None:
        started.release()
        release.wait(WAIT)

    hung = [pool.submit(hang) for _ in range(2)]
    for _ in hung:
        assert started.acquire(timeout=WAIT)
    waiting = pool.submit(lambda: "ran")
    assert not waiting.running()  # both threads are taken
    for call in hung:
        pool.abandon(call)
    assert waiting.result(timeout=WAIT) == "ran"
    assert pool.submit(lambda: 2).result(timeout=WAIT) == 2
    release.set()
    for call in hung:
        assert call.result(timeout=WAIT) is None  # an abandoned call still ends
    pool.shutdown()


@workflow(name="step_threads.hangs")
async def hangs(c: Context) -> None:
    await c.save(lambda: STUCK.wait(WAIT), timeout=0.05, retry=RetryPolicy(max_attempts=1))


@workflow(name="step_threads.quick")
async def quick(c: Context) -> int:
    return await c.save(lambda: 42)


@pytest.mark.anyio
async def test_more_hung_steps_than_threads_do_not_stop_other_runs() -> None:
    async with make_conductor(MemoryBackend(), hangs, quick, concurrency=64) as conductor:
        hung = [await conductor.start(hangs) for _ in range(45)]  # the pool has 40 threads
        for handle in hung:
            with pytest.raises(RunFailed):
                await handle.result(timeout=WAIT)
        handle = await conductor.start(quick)
        try:
            assert await handle.result(timeout=WAIT) == 42
        finally:
            STUCK.set()
