"""
Concurrency inside one run: saves under ``asyncio.gather`` run at the same time, are
recorded once each and replay to the same values; try/except/finally with steps in each
part survives an agent process killed between them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import Conductor, Context, workflow
from substantial.backends import from_url
from tests import features_app
from tests.agents import backend_url, check_log
from tests.harness import WAIT, wait_until
from tests.test_sagas import PROCESS_BACKENDS, features_agent, lines

started: dict[str, anyio.Event] = {}
executions: Counter[str] = Counter()


def meeting(run_id: str, me: str, other: str) -> Any:
    """An async step that says it started, then waits until ``other`` has started too:
    it finishes only if both run at once."""

    async def meet() -> str:
        executions[f"{run_id}:{me}"] += 1
        started[f"{run_id}:{me}"].set()
        with anyio.fail_after(10):  # a sequential engine would fail here, not hang
            await started[f"{run_id}:{other}"].wait()
        return f"{me} met {other}"

    return meet


@workflow(name="parallel.meet")
async def meet(c: Context) -> dict[str, Any]:
    run = c.run_id

    async def branch() -> str:
        first = await c.save(lambda: "x")
        await c.sleep(0.05)
        return first + await c.save(lambda: "y")

    live = list(
        await asyncio.gather(
            c.save(meeting(run, "a", "b")),
            c.save(meeting(run, "b", "a")),
            branch(),
            c.save(lambda: c.uuid4().hex),
        )
    )
    recorded = await c.save(lambda: live)  # what this wake-up saw, written to the log
    await c.sleep(0.1)  # the rest runs in a later wake-up, which replays the gather
    return {"recorded": recorded, "replayed": live}


pytestmark = pytest.mark.conductor(meet)


async def test_gathered_saves_run_concurrently_and_replay_identically(
    conductor: Conductor,
) -> None:
    run = "meet"
    started.update({f"{run}:a": anyio.Event(), f"{run}:b": anyio.Event()})
    executions.clear()
    handle = await conductor.start(meet, run_id=run)
    result = await handle.result(timeout=WAIT)
    assert result["recorded"][:3] == ["a met b", "b met a", "xy"]
    assert result["replayed"] == result["recorded"]
    assert executions == Counter({f"{run}:a": 1, f"{run}:b": 1})
    history = await handle.history()
    assert len({event.segment for event in history}) >= 3  # two durable sleeps: replayed
    checked = await check_log(conductor.backend, run)
    # a, b, x, uuid, (the branch's sleep), y, recorded: each position once
    assert sorted(checked.steps) == [0, 1, 2, 3, 5, 6]


# ---- try / except / finally across a killed agent process ----


@pytest.mark.parametrize("kind", PROCESS_BACKENDS)
async def test_a_finally_step_survives_an_agent_killed_after_the_rescue(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    run = "rescue-kill"
    backend = from_url(url)
    client = Conductor(backend)
    client.register(features_app.rescue)
    first = features_agent(url, effects, tmp_path)
    second = features_agent(url, effects, tmp_path)
    try:
        first.spawn()
        first.wait_ready()
        handle = await client.start(features_app.rescue, run_id=run)

        async def in_finally() -> bool:
            return "enter:finally" in lines(effects, run)

        await wait_until(in_finally, WAIT, "the first agent to enter the finally step")
        first.kill()  # SIGKILL: the failure and the rescue are recorded, finally is not
        (effects / f"{run}.open").touch()
        second.spawn()
        second.wait_ready()
        assert await handle.result(timeout=WAIT) == ["rescued", "finally"]
        assert lines(effects, run) == [
            "fail", "rescue", "enter:finally",  # the first agent
            "enter:finally", "done:finally",  # the second: only the finally step again
        ]  # fmt: skip
        checked = await check_log(backend, run)
        assert checked.steps == Counter({0: 1, 1: 1, 2: 1})
        assert checked.result == ["rescued", "finally"]
    finally:
        first.kill()
        second.kill()
        await backend.aclose()
