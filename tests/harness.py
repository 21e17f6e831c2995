"""
The test harness: one way to wait for a condition, one way to wait for a run's status,
and one way to build a conductor for a test (the ``conductor`` fixture in conftest.py
uses it).

A test never sleeps to synchronise: it waits for a condition with :func:`wait_until`,
which polls and fails with a message naming what it waited for.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from substantial import Conductor, Handle, RunNotFound, RunStatus, Workflow
from substantial._core.clock import VirtualClock
from substantial.backends import Backend

__all__ = [
    "CONDUCTOR_OPTIONS",
    "WAIT",
    "describe_agent",
    "make_conductor",
    "wait_for_status",
    "wait_until",
]

#: how long a test waits for something that should happen at once, at most (seconds).
#: An upper bound, never a wait. On 2 loaded cores moto answers ~10x slower than alone:
#: a fan-out of 20 children on s3 took 4.5 s alone and over 30 s in the full suite.
WAIT = 90.0

#: the options of a test conductor: short leases and polls, so nothing waits long
CONDUCTOR_OPTIONS: dict[str, Any] = {"lease": 3.0, "park_retry": 0.2, "poll_interval": 0.05}


def make_conductor(
    backend: Backend | str,
    *workflows: Workflow[Any],
    virtual_clock: bool = False,
    **options: Any,
) -> Conductor:
    """
    A conductor with the test options (``CONDUCTOR_OPTIONS``, overridden by ``options``)
    and ``workflows`` registered.
    With ``virtual_clock``, its agent runs on ``substantial.testing``'s virtual clock: when
    idle it jumps the clock to the next timer, so durable sleeps, receive timeouts and
    retry delays take no real time.
    """
    settings = {**CONDUCTOR_OPTIONS, **options}
    if virtual_clock:
        settings.setdefault("clock", VirtualClock())
    conductor = Conductor(backend, **settings)
    conductor.register(*workflows)
    return conductor


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool],
    timeout: float = WAIT,
    what: str = "the condition",
    every: float = 0.01,
) -> None:
    """
    Poll ``predicate`` (sync or async) until it holds; fail after ``timeout`` seconds
    with an ``AssertionError`` naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(every)


async def wait_for_status(
    handle: Handle[Any], *wanted: RunStatus, timeout: float = WAIT
) -> RunStatus:
    """Re-read the run's status until it exists and is one of ``wanted``; return it."""
    seen: list[RunStatus] = []

    async def reached() -> bool:
        try:
            seen[:] = [await handle.status()]
        except RunNotFound:  # not started yet (a child, a continuation)
            return False
        return seen[0] in wanted

    names = " or ".join(status.value for status in wanted)
    await wait_until(reached, timeout, f"{handle.run_id} to be {names}")
    return seen[0]


async def describe_agent(conductor: Conductor) -> str:
    """
    What a test's agent is doing, for the report of a failed test: the runs it works
    on, holds off or is starting, its step threads, the due schedule, its tasks' stacks.
    """
    import asyncio

    from substantial._agent import steps

    poller, processor = conductor._poller, conductor._processor
    parts = poller._parts
    now = anyio.current_time()
    lines = [
        f"== agent {conductor.name} (store clock {conductor.store.clock.now_ms()})",
        f"active: {sorted(processor.active)}",
        f"starting: {sorted(parts.client.starting)}",
        "held off: "
        + repr({run: round(until - now, 2) for run, until in parts.holdoffs.until.items()}),
        f"trouble: {parts.trouble.active}",
    ]
    pool = steps._step_threads
    if pool is not None:
        lines.append(
            f"step threads: {pool._threads} of {pool._max}, idle {pool._idle}, "
            f"queued {pool._work.qsize()}, abandoned {len(pool._abandoned)}"
        )
    try:
        entries, next_due, more = await conductor.store.due(
            conductor.store.clock.now_ms(), after=None, limit=40
        )
        lines.append(f"due (next {next_due}, more {more}): {[e.key for e in entries]}")
        for run_id in sorted({entry.run_id for entry in entries}):
            held = await conductor.store.lease_holder(run_id)
            lease = "none" if held is None else f"{held.owner} until {held.expires_ms}"
            lines.append(f"lease of {run_id}: {lease}")
    except Exception as exc:  # a report must not fail on a broken store
        lines.append(f"due: cannot read: {exc!r}")
    for task in asyncio.all_tasks():
        lines.append(f"-- task {task.get_name()}: {' > '.join(_awaiting(task.get_coro()))}")
    return "\n".join(lines)


def _awaiting(coro: Any) -> list[str]:
    """Where a coroutine waits: each function in its await chain, with its line."""
    chain = []
    while coro is not None and len(chain) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            chain.append(type(coro).__name__)
            break
        chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return chain
