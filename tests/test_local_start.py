"""
A run started in a process whose agent serves its queue is taken by that start (lease
written by the start, the run handed to the agent as written): the request count that
buys, and the crash rules it keeps.
"""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import Conductor, Context, workflow
from substantial._core.status import RunStatus
from substantial._store.keys import SCHEDULE_PREFIX, lease_key
from substantial.backends import Backend, FSBackend
from tests import chaos_app
from tests.agents import effect_lines
from tests.harness import WAIT, make_conductor, wait_until

APP = Path(__file__).with_name("local_start_app.py")


@workflow(name="local.ten")
async def ten(c: Context) -> int:
    total = 0
    for i in range(10):
        total += await c.save(lambda i=i: i)
    return total


@workflow(name="local.hears")
async def hears(c: Context) -> str:
    return str(await c.receive("word"))


opened: list[anyio.Event] = []


@workflow(name="local.held")
async def held(c: Context) -> int:
    async def wait_open() -> int:
        await opened[0].wait()
        return 1

    return await c.save(wait_open)


@workflow(name="local.billing", queue="billing")
async def billing(c: Context, x: int) -> int:
    return await c.save(lambda: x * 2)


async def _settled(conductor: Conductor) -> None:
    """Wait until the agent polled its queues and works on nothing."""
    await wait_until(
        lambda: bool(conductor._poller._seen) and not conductor._processor.active,
        what="the agent to be idle",
    )


async def test_a_ten_step_run_started_beside_its_agent_costs_few_requests(
    backend: Backend,
) -> None:
    conductor = make_conductor(backend, ten, poll_interval=5.0)
    listed: list[str] = []
    list_keys = backend.list

    async def listing(prefix: str, **options: Any) -> list[str]:
        listed.append(prefix)
        return await list_keys(prefix, **options)

    backend.list = listing  # type: ignore[method-assign]
    async with conductor:
        await _settled(conductor)
        assert await (await conductor.start(ten)).result(timeout=WAIT) == 45  # warm
        await _settled(conductor)
        before = Counter(backend.requests)
        listed.clear()
        handle = await conductor.start(ten)
        assert await handle.result(timeout=WAIT) == 45
        await _settled(conductor)
        cost = Counter(backend.requests)
        cost.subtract(before)
    # start: schedule entry, lease, segment 0, summary; 10 segments; the summary; the
    # entry and the lease deleted. No read: the start handed the run over as written,
    # and the end reached result() in memory. Lists are the agent's idle polls only. (S3
    # reads the ETag of a key it deletes unconditionally, the schedule entry: a head.)
    assert cost["get"] == 0
    assert cost["create"] == 13
    assert all(prefix.startswith(SCHEDULE_PREFIX) for prefix in listed)
    assert sum(cost.values()) - cost["head"] - cost["list"] == 17


caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")


@workflow(name="local.sees")
async def sees(c: Context) -> str:
    return await c.save(lambda: caller.get())


async def test_a_handed_run_does_not_run_in_the_starting_tasks_context(
    backend: Backend,
) -> None:
    """As a run a poll claims: the caller's context variables (and span) stay its own."""
    conductor = make_conductor(backend, sees, poll_interval=5.0)
    async with conductor:
        await _settled(conductor)
        caller.set("the request handler")
        handle = await conductor.start(sees)
        assert await backend.get(lease_key(handle.run_id)) is not None  # handed over
        assert await handle.result(timeout=WAIT) == "none"


async def test_an_event_sent_as_the_run_starts_is_delivered(backend: Backend) -> None:
    conductor = make_conductor(backend, hears)
    async with conductor:
        await _settled(conductor)
        handle = await conductor.start(hears)
        await handle.send("word", "hello")  # maybe before its first wake-up: not read there
        assert await handle.result(timeout=WAIT) == "hello"


async def test_a_queue_paused_here_is_not_taken_by_a_start(backend: Backend) -> None:
    conductor = make_conductor(backend, billing)
    async with conductor:
        await _settled(conductor)
        await conductor.pause_queue("billing")
        handle = await conductor.start(billing, 4)
        assert await backend.get(lease_key(handle.run_id)) is None
        assert await handle.status() is RunStatus.PENDING
        await conductor.resume_queue("billing")
        assert await handle.result(timeout=WAIT) == 8


async def test_a_start_beside_a_full_agent_leaves_the_run_to_the_schedule(
    tmp_path: Path,
) -> None:
    backend = FSBackend(tmp_path / "s")
    conductor = make_conductor(backend, held, concurrency=1)
    opened[:] = [anyio.Event()]
    async with conductor:
        await _settled(conductor)
        first = await conductor.start(held, run_id="first")
        assert conductor._processor.active == {"first"}  # its step holds the only place
        second = await conductor.start(held, run_id="second")
        assert await backend.get(lease_key("second")) is None  # left for a poll
        opened[0].set()
        assert await first.result(timeout=WAIT) == 1
        assert await second.result(timeout=WAIT) == 1


@pytest.mark.parametrize("when", ["at once", "in its step"])
async def test_a_run_taken_by_its_start_survives_the_death_of_that_process(
    when: str, tmp_path: Path
) -> None:
    """
    The start takes the lease for its own agent and writes the schedule entry due when
    that lease expires: killed right after start returns (or in the run's step), the
    process leaves the run to any agent, which finishes it once the lease expired.
    """
    url = f"file://{tmp_path / 'store'}"
    effects = tmp_path / "effects"
    effects.mkdir()
    env = {**os.environ, "CHAOS_EFFECTS": str(effects), "CHAOS_LEASE": "1.5"}
    env["PYTHONPATH"] = os.pathsep.join([str(APP.parent.parent), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, as tests/agents.py does
        [sys.executable, str(APP), url, "taken"], env=env, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await anyio.to_thread.run_sync(process.stdout.readline)
        holder, name = line.decode().split()
        assert holder == name  # the start took the lease in its agent's name
        if when == "in its step":
            await wait_until(lambda: effect_lines(effects, "taken") == ["enter"], 30, "the step")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    (effects / "open").touch()
    chaos_app.EFFECTS = effects
    conductor = Conductor(url, lease=1.5, poll_interval=0.05)
    conductor.register(chaos_app.gate)
    async with conductor:
        assert await conductor.handle("taken").result(timeout=60) == 7
    assert effect_lines(effects, "taken")[-1:] == ["enter"]
