"""Cron schedules: one run per tick whatever the number of agents, catchup, pause, DST."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from click.testing import CliRunner

from substantial import (
    Conductor,
    Context,
    InvalidName,
    InvalidSchedule,
    RunStatus,
    ScheduleNotFound,
    UnknownWorkflow,
    workflow,
)
from substantial._core import crontab
from substantial._core.clock import VirtualClock
from substantial._store.keys import RUNS_PREFIX
from substantial.backends import Backend, MemoryBackend
from substantial.cli import main
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until

HOUR = 3_600_000
DAY = 24 * HOUR
#: Monday 2026-11-30 00:00 UTC
T0 = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp() * 1000)


@workflow(name="cron.report")
async def report(c: Context, title: str) -> str:
    return await c.save(lambda: f"{title} done")


@workflow(name="cron.tick")
async def tick(c: Context) -> None:
    """Does nothing: the week test counts the runs the schedule starts."""


async def _run_ids(backend: Backend, schedule_id: str) -> list[str]:
    keys = await backend.list_all(f"{RUNS_PREFIX}{schedule_id}@")
    return sorted({key[len(RUNS_PREFIX) :].partition("/")[0] for key in keys})


async def _poll(*conductors: Conductor) -> None:
    """One poll of each (their agents are not running); returns when all work is done."""
    async with anyio.create_task_group() as work:
        for conductor in conductors:
            await conductor._claim_due(work)
    async with anyio.create_task_group() as work:  # the runs the ticks started
        for conductor in conductors:
            await conductor._claim_due(work)


def _tick_id(schedule_id: str, ms: int) -> str:
    return f"{schedule_id}@{datetime.fromtimestamp(ms / 1000, UTC):%Y%m%dT%H%M%S}Z"


async def test_a_virtual_week_of_an_hourly_schedule_with_three_agents_starts_168_runs() -> None:
    backend = MemoryBackend()
    clock = VirtualClock(T0)
    agents = [make_conductor(backend, tick, clock=clock, name=f"a{i}") for i in range(3)]
    began = time.perf_counter()
    async with agents[0], agents[1], agents[2]:
        await agents[0].schedule("hourly", tick, cron="0 * * * *")
        await wait_until(lambda: clock.now_ms() >= T0 + 7 * DAY + HOUR, what="a virtual week")
    elapsed = time.perf_counter() - began
    week = [_tick_id("hourly", T0 + hour * HOUR) for hour in range(1, 169)]
    started = [run for run in await _run_ids(backend, "hourly") if run <= week[-1]]
    assert started == week  # each hour once, none twice (a run id per tick)
    print(f"\na virtual week, 3 agents: {len(started)} runs in {elapsed:.2f}s")
    assert elapsed < 5.0  # about 0.5 s on an idle machine; CI shares two cores


async def test_each_tick_starts_one_run_on_every_backend(backend: Backend) -> None:
    clock = VirtualClock(T0, auto_advance=False)
    agents = [make_conductor(backend, report, clock=clock) for _ in range(3)]
    schedule = await agents[0].schedule("every", report, "x", cron="*/15 * * * *")
    for quarter in range(1, 4):
        clock.advance_to(T0 + quarter * 15 * 60_000)
        await _poll(*agents)
    expected = [_tick_id("every", T0 + q * 15 * 60_000) for q in range(1, 4)]
    assert await _run_ids(backend, "every") == expected
    info = await schedule.describe(ticks=2)
    assert info.last_run_id == expected[-1]
    assert info.next_ticks == [
        datetime.fromtimestamp((T0 + q * 15 * 60_000) / 1000, ZoneInfo("UTC")) for q in (4, 5)
    ]
    assert await agents[0].handle(expected[0]).result(timeout=WAIT) == "x done"


@pytest.mark.parametrize(
    ("catchup", "started_hours"), [("all", [1, 2, 3, 4, 5]), ("latest", [5]), ("none", [])]
)
async def test_catchup_says_what_ticks_missed_while_no_agent_ran_do(
    catchup: str, started_hours: list[int]
) -> None:
    backend = MemoryBackend()
    clock = VirtualClock(T0, auto_advance=False)
    agent = make_conductor(backend, report, clock=clock)
    await agent.schedule("late", report, "x", cron="0 * * * *", catchup=catchup)
    clock.advance_to(T0 + 5 * HOUR + 30 * 60_000)  # five ticks missed, the last by 30 min
    await _poll(agent)
    assert await _run_ids(backend, "late") == [
        _tick_id("late", T0 + h * HOUR) for h in started_hours
    ]
    clock.advance_to(T0 + 6 * HOUR)  # on time again: every catchup starts it
    await _poll(agent)
    assert (await _run_ids(backend, "late"))[-1] == _tick_id("late", T0 + 6 * HOUR)


async def test_a_paused_schedule_starts_nothing_that_day_and_skips_it_on_resume() -> None:
    backend = MemoryBackend()
    clock = VirtualClock(T0, auto_advance=False)
    agents = [make_conductor(backend, report, clock=clock) for _ in range(3)]
    schedule = await agents[0].schedule("daily", report, "d", cron="0 * * * *", catchup="all")
    for hour in range(1, 3 * 24 + 1):
        if hour == 24:
            await schedule.pause()
            assert (await schedule.describe()).paused
        if hour == 48:
            await schedule.resume()
        clock.advance_to(T0 + hour * HOUR)
        await _poll(*agents)
    started = await _run_ids(backend, "daily")
    hours = [h for h in range(1, 73) if not 24 <= h < 48]
    assert started == [_tick_id("daily", T0 + h * HOUR) for h in hours]


async def test_schedule_api_list_trigger_delete_and_errors(backend: Backend) -> None:
    clock = VirtualClock(T0, auto_advance=False)
    agent = make_conductor(backend, report, clock=clock)
    first = await agent.schedule(
        "b-nightly", report, "n", cron="0 3 * * *", timezone="Europe/Zurich"
    )
    await agent.schedule("a-weekly", report, "w", cron="0 9 * * 1")
    assert [s.id for s in await agent.schedules()] == ["a-weekly", "b-nightly"]
    info = await first.describe(ticks=1)
    assert info.workflow == "cron.report"
    assert info.timezone == "Europe/Zurich"
    assert info.next_ticks[0].isoformat() == "2026-11-30T03:00:00+01:00"
    assert info.last_run_id is None
    # Updating keeps its place; a manual trigger starts a run now.
    await agent.schedule("b-nightly", report, "n2", cron="0 4 * * *", timezone="Europe/Zurich")
    assert (await first.describe(ticks=1)).next_ticks[0].hour == 4
    handle = await first.trigger()
    assert handle.run_id.startswith("b-nightly@manual-")
    async with anyio.create_task_group() as work:
        await agent._claim_due(work)
    assert await handle.result(timeout=WAIT) == "n2 done"
    await first.delete()
    await first.delete()
    assert [s.id for s in await agent.schedules()] == ["a-weekly"]
    with pytest.raises(ScheduleNotFound):
        await first.describe()
    clock.advance_to(T0 + DAY)
    await _poll(agent)  # the deleted schedule's tick entry is dropped, nothing starts
    assert await _run_ids(backend, "b-nightly") == [handle.run_id]
    with pytest.raises(InvalidSchedule, match="bad cron expression"):
        await agent.schedule("x", report, "n", cron="61 * * * *")
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        await agent.schedule("x", report, "n", cron="0 * * * *", timezone="Mars/Olympus")
    with pytest.raises(InvalidSchedule, match="catchup"):
        await agent.schedule("x", report, "n", cron="0 * * * *", catchup="some")
    with pytest.raises(InvalidName):
        await agent.schedule("x/y", report, "n", cron="0 * * * *")
    with pytest.raises(UnknownWorkflow):
        await Conductor(backend).schedule("x", report, "n", cron="0 * * * *")


def test_daylight_saving_follows_cronsims_rules() -> None:
    zurich = "Europe/Zurich"

    def local(ticks: list[int]) -> list[str]:
        zone = ZoneInfo(zurich)
        return [datetime.fromtimestamp(t / 1000, zone).isoformat() for t in ticks]

    spring = int(datetime(2026, 3, 28, 12, tzinfo=UTC).timestamp() * 1000)
    autumn = int(datetime(2026, 10, 24, 12, tzinfo=UTC).timestamp() * 1000)
    # 02:30 does not exist on 29 March: the tick runs once, at the first valid time after.
    assert local(list(islice(crontab.ticks_after("30 2 * * *", zurich, spring), 2))) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]
    # 02:30 happens twice on 25 October: a daily tick runs once.
    assert local(list(islice(crontab.ticks_after("30 2 * * *", zurich, autumn), 2))) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # An hourly schedule runs in both 02:00 hours of that night: 25 ticks that day.
    day = int(datetime(2026, 10, 24, 22, tzinfo=UTC).timestamp() * 1000)  # local midnight
    ticks = [
        t
        for t in islice(crontab.ticks_after("0 * * * *", zurich, day - 1), 30)
        if t < day + 25 * HOUR
    ]
    assert len(ticks) == 25
    assert crontab.latest_tick("0 3 * * *", zurich, spring) == int(
        datetime(2026, 3, 28, 2, tzinfo=UTC).timestamp() * 1000
    )


async def test_a_tick_run_is_an_ordinary_run(backend: Backend) -> None:
    async with make_conductor(backend, report, virtual_clock=True) as agent:
        await agent.schedule("soon", report, "s", cron="* * * * *")
        runs: list[str] = []

        async def one_started() -> bool:
            runs[:] = await _run_ids(backend, "soon")
            return bool(runs)

        await wait_until(one_started, what="the first tick's run")
        handle = agent.handle(runs[0])
        assert await wait_for_status(handle, RunStatus.COMPLETED)
        await agent.get_schedule("soon").pause()


def test_the_cli_lists_and_steers_schedules(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"

    async def make() -> None:
        await Conductor(url).schedule("ops.nightly", "cron.report", "n", cron="0 3 * * *")

    anyio.run(make)
    runner = CliRunner()

    def cli(*args: str) -> str:
        done = runner.invoke(main, [*args, "--backend", url])
        assert done.exit_code == 0, done.output
        return done.output.strip()

    assert cli("schedule", "list").startswith("ops.nightly  '0 3 * * *' UTC  active  cron.report")
    assert cli("schedule", "pause", "ops.nightly") == "schedule ops.nightly paused"
    [line] = cli("schedule", "list", "--json").splitlines()
    listed = json.loads(line)
    assert listed["state"] == "paused"
    assert listed["next_tick"] is None
    assert cli("schedule", "resume", "ops.nightly") == "schedule ops.nightly resumed"
    assert cli("schedule", "trigger", "ops.nightly").startswith("started run ops.nightly@manual-")
    assert cli("schedule", "delete", "ops.nightly") == "schedule ops.nightly deleted"
    assert cli("schedule", "list") == ""
    done = runner.invoke(main, ["schedule", "pause", "ops.nightly", "--backend", url])
    assert done.exit_code == 1
    assert "no schedule 'ops.nightly'" in done.output
