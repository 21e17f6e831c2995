"""
The schedule: an idle poll costs the same with 0 or 10,000 sleeping runs, and stale or
duplicate schedule entries are harmless and cleaned up.
"""

from __future__ import annotations

import builtins
from collections import Counter
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from substantial import Conductor, Context, workflow
from substantial._core.clock import now_ms
from substantial._core.status import RunStatus
from substantial._store.keys import SCHEDULE_PREFIX, ScheduleEntry
from substantial._store.runs import RunStore
from substantial.backends import Backend, FSBackend, MemoryBackend
from tests.agents import check_log
from tests.harness import wait_until

SLEEPING = 10_000
HOUR_MS = 3_600_000


class CountingMemory(MemoryBackend):
    """A memory backend that also counts the keys ``list`` returns."""

    async def list(
        self, prefix: str, *, after: str | None = None, limit: int = 1000
    ) -> builtins.list[str]:
        keys = await super().list(prefix, after=after, limit=limit)
        self.requests["keys listed"] += len(keys)
        return keys


class CountingFiles(FSBackend):
    """A files backend that also counts the keys ``list`` and ``list_before`` return."""

    async def list(
        self, prefix: str, *, after: str | None = None, limit: int = 1000
    ) -> builtins.list[str]:
        keys = await super().list(prefix, after=after, limit=limit)
        self.requests["keys listed"] += len(keys)
        return keys

    async def list_before(
        self, prefix: str, before: str | None, *, after: str | None = None, limit: int = 1000
    ) -> builtins.list[str]:
        keys = await super().list_before(prefix, before, after=after, limit=limit)
        self.requests["keys listed"] += len(keys)
        return keys


async def _idle_poll_cost(backend: Backend) -> Counter[str]:
    """What one poll of an agent with nothing due costs: requests and keys listed."""
    conductor = Conductor(backend)
    async with anyio.create_task_group() as work:
        before = Counter(backend.requests)
        claimed, _next_due = await conductor._claim_due(work)  # one poll, as the loop does
        cost = Counter(backend.requests)
        cost.subtract(before)
    assert claimed == 0
    return +cost


@pytest.mark.parametrize("kind", ["memory", "files"])
async def test_an_idle_poll_costs_the_same_with_ten_thousand_sleeping_runs(
    kind: str, tmp_path: Path
) -> None:
    backend: Backend = CountingMemory() if kind == "memory" else CountingFiles(tmp_path / "s")
    empty = await _idle_poll_cost(backend)
    # 10,000 runs asleep for an hour: their schedule entries, written as an agent does.
    store = RunStore(backend)
    due = now_ms() + HOUR_MS
    for start in range(0, SLEEPING, 500):
        async with anyio.create_task_group() as tg:
            for i in range(start, start + 500):
                tg.start_soon(store.schedule, f"sleeper-{i:05d}", due + i)
    assert len(await backend.list_all(SCHEDULE_PREFIX)) == SLEEPING
    full = await _idle_poll_cost(backend)
    print(f"\nidle poll on {kind}: 0 sleeping {dict(empty)}; {SLEEPING} sleeping {dict(full)}")
    assert empty == Counter({"list": 1})
    # One list request either way; it stops at the first entry not yet due.
    assert full["list"] == 1
    assert set(full) <= {"list", "keys listed"}
    assert full["keys listed"] <= 16
    if kind == "files":  # the poll reads only up to a little past now: no sleeper at all
        assert full["keys listed"] == 0


async def test_idle_poll_cost_does_not_depend_on_how_many_sleep(backend: Backend) -> None:
    """The same on every backend with real sleeping runs, by request count."""
    conductor = Conductor(backend)
    conductor.register(sleeper)
    empty = await _idle_poll_cost(backend)
    for i in range(40):
        await conductor.start(sleeper, run_id=f"sleeper-{i}")
    async with conductor:

        async def all_asleep() -> bool:
            statuses = [await conductor.handle(f"sleeper-{i}").status() for i in range(40)]
            return all(status is RunStatus.SLEEPING for status in statuses)

        await wait_until(all_asleep, 60, "40 runs to fall asleep", every=0.1)
    full = await _idle_poll_cost(backend)
    assert empty["list"] == 1  # (s3 also checks its bucket once, on first use)
    assert full == Counter({"list": 1})


runs_of: Counter[str] = Counter()


@workflow(name="schedule.sleeper")
async def sleeper(c: Context) -> str:
    def step() -> str:
        runs_of[c.run_id] += 1
        return "stepped"

    await c.save(step)
    await c.sleep(timedelta(hours=1))
    return "woke"


@workflow(name="schedule.quick")
async def quick(c: Context) -> int:
    def step() -> int:
        runs_of[c.run_id] += 1
        return 5

    return await c.save(step)


async def test_stale_and_duplicate_schedule_entries_are_harmless_and_cleaned_up(
    backend: Backend,
) -> None:
    conductor = Conductor(backend, poll_interval=0.05)
    conductor.register(sleeper, quick)
    store = RunStore(backend)
    tag = backend.name
    async with conductor:
        done = await conductor.start(quick, run_id=f"done-{tag}")
        assert await done.result(timeout=30) == 5
        asleep = await conductor.start(sleeper, run_id=f"asleep-{tag}")

        async def sleeping() -> bool:
            # The agent deletes the entry it consumed last (a crash in between repeats the
            # wake-up instead of losing it): wait for the summary and for one entry left,
            # the wake-up in an hour, not the consumed one (the start's: due when the
            # lease its local agent took expires, also in the future).
            entries = [e for e in await _schedule(backend) if e.run_id == asleep.run_id]
            settled = len(entries) == 1 and entries[0].due_ms > now_ms() + HOUR_MS // 2
            return await asleep.status() is RunStatus.SLEEPING and settled

        await wait_until(sleeping, 30, "the sleeper to sleep")
        wake = [e for e in await _schedule(backend) if e.run_id == asleep.run_id]
        assert len(wake) == 1
        assert wake[0].due_ms > now_ms() + HOUR_MS // 2
        # Stale and duplicate entries: past, now, repeated keys, and a send-like tag.
        now = now_ms()
        for run_id in (done.run_id, asleep.run_id):
            await store.schedule(run_id, now - 60_000)
            await store.schedule(run_id, now, "s")
            await store.schedule(run_id, now, "dup1")
            await store.schedule(run_id, now, "dup2")

        async def cleaned() -> bool:
            return [e.key for e in await _schedule(backend)] == [wake[0].key]

        await wait_until(cleaned, 60, "the stale entries to go")
        assert await done.status() is RunStatus.COMPLETED
        assert await asleep.status() is RunStatus.SLEEPING
    assert runs_of[done.run_id] == 1
    assert runs_of[asleep.run_id] == 1
    for run_id in (done.run_id, asleep.run_id):
        checked = await check_log(backend, run_id)
        assert checked.steps == Counter({0: 1})


async def _schedule(backend: Backend) -> list[ScheduleEntry]:
    keys = await backend.list_all(SCHEDULE_PREFIX)
    return [entry for key in keys if (entry := ScheduleEntry.parse(key)) is not None]
