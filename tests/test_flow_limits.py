"""Named step limits: concurrency and rate, shared by every agent, waited for durably."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from substantial import Conductor, Context, InvalidName, RunStatus, workflow
from substantial.backends import Backend
from substantial.cli import main
from tests.harness import WAIT, wait_for_status, wait_until
from tests.test_flow_concurrency import Gauge

gauge = Gauge()
starts: list[int] = []
clock_of: list[Conductor] = []


@workflow(name="limits.call_api")
async def call_api(c: Context, name: str) -> str:
    return await c.save(lambda: gauge.step(name), limit="api")


@workflow(name="limits.rated")
async def rated(c: Context) -> int:
    return await c.save(lambda: _stamp(), limit="per-hour")


def _stamp() -> int:
    now = clock_of[0].store.clock.now_ms()
    starts.append(now)
    return now


@pytest.fixture(autouse=True)
def fresh() -> None:
    global gauge
    gauge = Gauge()
    starts.clear()
    clock_of.clear()


@pytest.mark.conductor(call_api)
async def test_a_step_limit_of_three_runs_three_steps_at_once(conductor: Conductor) -> None:
    await conductor.set_limit("api", concurrency=3)
    handles = [await conductor.start(call_api, f"s{i}") for i in range(6)]
    await wait_until(lambda: gauge.now == 3, what="three limited steps running")
    waiting = [
        h
        for h, name in zip(handles, [f"s{i}" for i in range(6)], strict=True)
        if name not in gauge.order
    ]
    for handle in waiting:  # released while they wait: sleeping until a slot may be free
        await wait_for_status(handle, RunStatus.SLEEPING)
    info = await conductor.get_limit("api")
    assert info is not None
    assert (info.concurrency, info.in_use, info.rate) == (3, 3, None)
    gauge.permits.release(6)
    for i, handle in enumerate(handles):
        assert await handle.result(timeout=WAIT) == f"s{i}"
    assert gauge.most == 3


@pytest.mark.conductor(rated)
async def test_a_rate_limit_holds_in_every_window(conductor: Conductor) -> None:
    clock_of.append(conductor)
    await conductor.set_limit("per-hour", rate=2, per=timedelta(hours=1))
    handles = [await conductor.start(rated) for _ in range(5)]
    for handle in handles:
        await handle.result(timeout=WAIT)  # the idle agent jumps the virtual clock ahead
    assert len(starts) == 5
    # A limit counts a start when the agent admits the step; the step's code reads the
    # clock a moment later (the virtual clock runs on between jumps), so the
    # windows checked are a second shorter than the limit's hour.
    hour = 3_600_000
    for start in starts:
        assert sum(start <= other < start + hour - 1000 for other in starts) <= 2, starts
    assert max(starts) - min(starts) >= 2 * hour - 1000  # five starts, two an hour: three windows


async def test_limits_are_set_read_listed_and_deleted(backend: Backend) -> None:
    conductor = Conductor(backend)
    await conductor.set_limit("openai", concurrency=5, rate=100, per=timedelta(minutes=1))
    await conductor.set_limit("db", concurrency=2)
    info = await conductor.get_limit("openai")
    assert info is not None
    assert (info.concurrency, info.rate, info.per) == (5, 100, timedelta(minutes=1))
    assert (info.in_use, info.started_in_window) == (0, 0)
    assert [i.name for i in await conductor.limits()] == ["db", "openai"]
    assert await conductor.delete_limit("db")
    assert not await conductor.delete_limit("db")
    assert await conductor.get_limit("db") is None
    with pytest.raises(ValueError, match="concurrency, rate"):
        await conductor.set_limit("x")
    with pytest.raises(ValueError, match="positive per"):
        await conductor.set_limit("x", rate=3)
    with pytest.raises(InvalidName):
        await conductor.set_limit("a b", concurrency=1)


@pytest.mark.conductor(call_api)
async def test_a_step_naming_no_limit_set_runs_unlimited(conductor: Conductor) -> None:
    gauge.permits.release(1)
    assert await (await conductor.start(call_api, "free")).result(timeout=WAIT) == "free"


def test_the_cli_lists_limits_with_their_use(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"

    async def setup() -> None:
        conductor = Conductor(url)
        await conductor.set_limit("openai", concurrency=5, rate=100, per=timedelta(minutes=1))
        await conductor.set_limit("db", concurrency=2)

    anyio.run(setup)
    done = CliRunner().invoke(main, ["limits", "--backend", url])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [
        "db  0/2 running",
        "openai  0/5 running, 0/100 started per 60s",
    ]
    done = CliRunner().invoke(main, ["limits", "--json", "--backend", url])
    assert json.loads(done.output.splitlines()[1])["per_seconds"] == 60.0
