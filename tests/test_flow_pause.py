"""Pausing and resuming a run, and a whole queue, on every backend."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from substantial import Conductor, Context, RunFinished, RunStatus, workflow
from substantial._core.clock import VirtualClock
from substantial._store.keys import SCHEDULE_PREFIX, ScheduleEntry, schedule_prefix
from substantial.backends import Backend
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until

steps: list[str] = []


@workflow(name="pause.two_steps")
async def two_steps(c: Context, tag: str) -> str:
    first = await c.save(lambda: steps.append(f"{tag}:a") or "a")
    by = await c.receive("go")
    second = await c.save(lambda: steps.append(f"{tag}:b") or "b")
    return f"{first}{by}{second}"


@workflow(name="pause.sleeper")
async def sleeper(c: Context) -> str:
    await c.sleep(timedelta(hours=1))
    return await c.save(lambda: "woke")


@workflow(name="pause.billing", queue="billing")
async def billing(c: Context, n: int) -> int:
    return await c.save(lambda: n + 1)


async def _schedule_of(backend: Backend, run_id: str, queue: str = "default") -> list[str]:
    keys = await backend.list_all(schedule_prefix(queue))
    return [key for key in keys if (e := ScheduleEntry.parse(key)) and e.run_id == run_id]


async def _kinds(conductor: Conductor, run_id: str) -> list[str]:
    return [event.kind for event in await conductor.handle(run_id).history()]


@pytest.mark.conductor(two_steps)
async def test_a_paused_run_takes_events_and_carries_on_where_it_was(
    conductor: Conductor, backend: Backend
) -> None:
    tag = f"p1-{backend.name}"
    handle = await conductor.start(two_steps, tag)
    await wait_for_status(handle, RunStatus.WAITING)
    await handle.pause()
    await wait_for_status(handle, RunStatus.PAUSED)
    assert await _kinds(conductor, handle.run_id) == [
        "started", "step_completed", "pause_changed"
    ]  # fmt: skip

    # An event sent to the paused run waits in its inbox; no code of the run runs.
    await handle.send("go", "+")

    async def entries_gone() -> bool:
        return not await _schedule_of(backend, handle.run_id)

    await wait_until(entries_gone, what="the paused run's schedule entries to be dropped")
    assert await handle.status() is RunStatus.PAUSED
    assert "event_received" not in await _kinds(conductor, handle.run_id)
    assert steps.count(f"{tag}:b") == 0
    await handle.pause()  # pausing a paused run changes nothing

    await handle.resume()
    assert await handle.result(timeout=WAIT) == "a+b"
    kinds = await _kinds(conductor, handle.run_id)
    assert kinds.count("pause_changed") == 2  # the second pause changed nothing
    assert steps.count(f"{tag}:a") == steps.count(f"{tag}:b") == 1
    with pytest.raises(RunFinished):
        await handle.pause()


async def test_a_run_paused_in_its_sleep_wakes_only_once_resumed(backend: Backend) -> None:
    clock = VirtualClock(auto_advance=False)  # moved by hand below
    async with make_conductor(backend, sleeper, clock=clock) as conductor:
        handle = await conductor.start(sleeper)
        await wait_for_status(handle, RunStatus.SLEEPING)
        await handle.pause()
        await wait_for_status(handle, RunStatus.PAUSED)
        # Its timer entry is dropped: no agent claims a paused run when the timer is due.
        await wait_until(lambda: _no_entries(backend, handle.run_id), what="entries dropped")
        clock.advance_to(clock.now_ms() + 2 * 3_600_000)
        async with anyio.create_task_group() as work:
            assert await conductor._claim_due(work) == (0, None)
        await handle.resume()
        assert await handle.result(timeout=WAIT) == "woke"


async def test_a_paused_run_is_paused_for_every_agent(backend: Backend) -> None:
    """The pause is in the log: a fresh agent leaves the run paused."""
    async with make_conductor(backend, two_steps, virtual_clock=True) as first:
        handle = await first.start(two_steps, "p2")
        await wait_for_status(handle, RunStatus.WAITING)
        await handle.pause()
        await wait_for_status(handle, RunStatus.PAUSED)
    async with make_conductor(backend, two_steps, virtual_clock=True) as second:
        again = second.handle(handle.run_id)
        await again.send("go", "!")
        await wait_until(
            lambda: _no_entries(backend, handle.run_id), what="the event's entry to be dropped"
        )
        assert await again.status() is RunStatus.PAUSED
        await again.resume()
        assert await again.result(timeout=WAIT) == "a!b"


async def _no_entries(backend: Backend, run_id: str) -> bool:
    return not await _schedule_of(backend, run_id)


async def test_a_paused_queue_is_not_claimed_until_resumed(backend: Backend) -> None:
    conductor = make_conductor(backend, billing, two_steps)  # its agent is not running
    await conductor.pause_queue("billing")
    assert await conductor.queue_paused("billing")
    assert not await conductor.queue_paused("default")
    handle = await conductor.start(billing, 1)
    other = await conductor.start(two_steps, "q")
    async with anyio.create_task_group() as work:
        claimed, _ = await conductor._claim_due(work)
    assert claimed == 1  # the default queue's run, not billing's
    assert await conductor.store.lease_holder(handle.run_id) is None
    assert await handle.status() is RunStatus.PENDING
    await conductor.resume_queue("billing")
    assert not await conductor.queue_paused("billing")
    async with conductor:
        assert await handle.result(timeout=WAIT) == 2
        await wait_for_status(conductor.handle(other.run_id), RunStatus.WAITING)
    # The pause mark sorts before every entry of the queue's index.
    assert not await backend.list_all(SCHEDULE_PREFIX + "!")


def test_the_flow_control_example_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "flow_control.py"), str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120, cwd=root, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["serving queues ['billing', 'default']", "dee: 30"]
    assert "report is paused" in lines
    assert "monthly (ok)" in lines
