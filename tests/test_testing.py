"""substantial.testing: a virtual clock that skips to the next timer, and the Replayer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from substantial import Context, NonDeterminismError, RunStatus, workflow
from substantial.backends import FSBackend
from substantial.testing import Replayer, WorkflowEnvironment
from tests.golden_workflows import GOLDEN, WORKFLOWS


@workflow(name="testing.reminder")
async def reminder(c: Context, who: str) -> str:
    began = c.now()
    await c.sleep(timedelta(days=30))
    await c.save(lambda: who)
    await c.sleep(timedelta(days=1))
    return f"reminded {who} after {(c.now() - began).days} days"


@workflow(name="testing.approval")
async def approval(c: Context) -> str:
    try:
        decision = await c.receive("decision", timeout=timedelta(days=7))
    except TimeoutError:
        return "expired"
    return str(decision)


async def test_a_thirty_day_sleep_finishes_at_once_on_the_virtual_clock() -> None:
    async with WorkflowEnvironment(reminder) as env:
        began = env.now()
        handle = await env.start(reminder, "alice")
        assert await handle.result(timeout=10) == "reminded alice after 31 days"
        assert env.now() - began >= timedelta(days=31)
        kinds = [event.kind for event in await handle.history()]
        assert kinds.count("timer_fired") == 2


async def test_events_are_delivered_before_time_is_skipped() -> None:
    async with WorkflowEnvironment(approval, skip_time=False) as env:
        handle = await env.start(approval)
        await handle.send("decision", "approved")
        with env.time_skipping():
            assert await handle.result(timeout=10) == "approved"


async def test_a_timeout_fires_on_the_virtual_clock() -> None:
    async with WorkflowEnvironment(approval) as env:
        handle = await env.start(approval)
        assert await handle.result(timeout=10) == "expired"
        assert await handle.status() is RunStatus.COMPLETED


async def test_environment_on_a_given_backend(tmp_path: Path) -> None:
    async with WorkflowEnvironment(reminder, backend=FSBackend(tmp_path)) as env:
        handle = await env.start(reminder, "bob")
        assert await handle.result(timeout=10) == "reminded bob after 31 days"


def test_replayer_accepts_the_golden_logs() -> None:
    replayer = Replayer(*WORKFLOWS)
    outcome = replayer.replay_segments(GOLDEN / "order")
    assert outcome is not None
    assert outcome.WhichOneof("kind") == "completed"


def test_replayer_rejects_changed_code() -> None:
    @workflow(name="golden.order")
    async def order(c: Context, order_id: str, amount: int) -> None:
        await c.receive("something else")

    with pytest.raises(NonDeterminismError, match="position 0"):
        Replayer(order).replay_segments(GOLDEN / "order")


async def test_replayer_replays_a_stored_run(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path)
    async with WorkflowEnvironment(reminder, backend=backend) as env:
        handle = await env.start(reminder, "carol")
        await handle.result(timeout=10)
    outcome = await Replayer(reminder).replay_run(backend, handle.run_id)
    assert outcome is not None
    assert outcome.WhichOneof("kind") == "completed"
