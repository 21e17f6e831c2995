"""
Leases: taken with create-if-absent, taken over only once expired, renewed while a long
step runs (async or CPU-bound), released when done; and fencing: an agent that lost its
lease cannot write the log.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from substantial import Conductor, Context, workflow
from substantial._core.clock import VirtualClock, now_ms
from substantial._core.status import RunStatus
from substantial._store.keys import lease_key
from substantial._store.runs import RunStore
from substantial.backends import Backend, from_url
from tests import chaos_app
from tests.agents import Agent, backend_url, check_log, effect_lines, lease_of
from tests.conftest import BACKENDS
from tests.harness import WAIT, wait_until

# Short, so a step three leases long costs little; not shorter: on 2 loaded cores (load
# average 18 seen) a 0.5 s lease lapsed between renewals and the step ran twice.
LEASE = 1.0
executions: Counter[str] = Counter()


@workflow(name="leases.long_async")
async def long_async(c: Context) -> str:
    async def step() -> str:
        executions[c.run_id] += 1
        await anyio.sleep(3 * LEASE)
        return "done"

    return await c.save(step)


@workflow(name="leases.long_cpu")
async def long_cpu(c: Context) -> int:
    def spin() -> int:
        executions[c.run_id] += 1
        deadline = time.monotonic() + 3 * LEASE
        n = 0
        while time.monotonic() < deadline:  # pure Python: holds the GIL but for switches
            n += 1
        return 1

    return await c.save(spin)


async def _lease_gone(backend: Backend, run_id: str) -> bool:
    return await backend.get(lease_key(run_id)) is None


@pytest.mark.parametrize("wf", [long_async, long_cpu], ids=["async", "cpu-bound-sync"])
async def test_a_step_three_leases_long_runs_once_while_another_agent_waits(
    backend: Backend, wf: object
) -> None:
    # Two agents on one storage: if the first one's lease lapsed during the step, the
    # second would take the run over and execute the step again.
    first = Conductor(backend, lease=LEASE, name="first", poll_interval=0.05)
    second = Conductor(backend, lease=LEASE, name="second", poll_interval=0.05)
    first.register(long_async, long_cpu)
    second.register(long_async, long_cpu)
    async with first, second:
        handle = await first.start(wf, run_id=f"long-{wf.name}-{backend.name}")  # type: ignore[attr-defined]
        await handle.result(timeout=60)
        await wait_until(lambda: _lease_gone(backend, handle.run_id), WAIT, "the lease release")
    assert executions[handle.run_id] == 1
    checked = await check_log(backend, handle.run_id)
    assert checked.steps == Counter({0: 1})


async def test_lease_is_exclusive_until_it_expires_then_taken_over(backend: Backend) -> None:
    clock = VirtualClock(auto_advance=False)  # the lease expires when the test says
    store = RunStore(backend, clock)
    held = await store.acquire("r1", "a", 60_000)
    assert held is not None
    assert await store.acquire("r1", "b", 60_000) is None  # live: refused
    clock.advance_to(held.expires_ms + 1)
    taken = await store.acquire("r1", "b", 10_000)
    assert taken is not None
    holder = await store.lease_holder("r1")
    assert holder is not None
    assert holder.owner == "b"
    assert await store.renew(held, 10_000) is None  # the old holder learns it lost
    await store.release(held)  # a stale release deletes nothing
    assert await store.lease_holder("r1") is not None
    await store.release(taken)
    assert await store.lease_holder("r1") is None


async def test_an_agent_takes_back_a_lease_of_its_own_it_could_not_release(
    backend: Backend,
) -> None:
    # An agent claims only runs it does not work on: a live lease in its own name is
    # one whose release failed (a store blip), and it does not wait for it to expire.
    store = RunStore(backend)
    leftover = await store.acquire("r3", "a", 60_000)
    assert leftover is not None
    assert await store.acquire("r3", "b", 60_000) is None  # still keeps others off
    again = await store.acquire("r3", "a", 60_000)
    assert again is not None
    assert again.version != leftover.version
    assert await store.renew(leftover, 60_000) is None  # one holder: the new take


@workflow(name="leases.quick")
async def quick(c: Context) -> int:
    return await c.save(lambda: 1)


async def test_on_the_virtual_clock_a_lease_nobody_releases_still_lapses() -> None:
    # The test clock skips ahead when the agent is idle and otherwise runs at the wall
    # clock's pace: a lease left by a dead agent lapses after its length, as in
    # production, and the run is not stuck behind it for ever.
    from substantial.backends import MemoryBackend
    from tests.harness import make_conductor

    backend = MemoryBackend()
    async with make_conductor(backend, quick, virtual_clock=True) as conductor:
        ghost = await conductor.store.acquire("q1", "dead-agent", round(LEASE * 1000))
        assert ghost is not None
        handle = await conductor.start(quick, run_id="q1")
        assert await handle.result(timeout=WAIT) == 1
        assert conductor.store.clock.now_ms() >= ghost.expires_ms


async def test_two_agents_racing_for_an_expired_lease_one_wins(backend: Backend) -> None:
    store = RunStore(backend)
    stale = await store.acquire("r2", "dead", 1)
    assert stale is not None
    await wait_until(lambda: _after(stale.expires_ms), 5, "the lease to expire")
    won: list[str] = []

    async def take(owner: str) -> None:
        if await store.acquire("r2", owner, 10_000) is not None:
            won.append(owner)

    async with anyio.create_task_group() as tg:
        for owner in ("a", "b", "c", "d"):
            tg.start_soon(take, owner)
    assert len(won) == 1


async def _after(ms: int) -> bool:
    return now_ms() > ms


FENCING_BACKENDS = [p for p in BACKENDS if p.values[0] != "memory"]


@pytest.mark.parametrize("kind", FENCING_BACKENDS)
async def test_a_paused_agent_past_its_lease_cannot_write(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """
    Agent A is SIGSTOPped inside a step past its lease; agent B takes the run over and
    finishes it; A is continued, finishes its step and must drop the run without
    touching the log.
    """
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    backend = from_url(url)
    client = Conductor(backend)
    client.register(chaos_app.gate)
    env = {"CHAOS_LEASE": "1", "CHAOS_POLL": "0.05", "CHAOS_GRACE": "5"}
    a = Agent(url, effects, tmp_path, env)
    b = Agent(url, effects, tmp_path, env)
    try:
        a.spawn()
        a.wait_ready()
        handle = await client.start(chaos_app.gate, run_id="gate-1")

        async def entered() -> bool:
            return effect_lines(effects, "gate-1") == ["enter"]

        await wait_until(entered, 30, "agent A to enter the step")
        os.kill(a.pid, signal.SIGSTOP)
        entry = await backend.get(lease_key("gate-1"))
        assert entry is not None
        expires = lease_of(entry[0]).expires_ms
        await wait_until(lambda: _after(expires), 10, "A's lease to expire")
        (effects / "open").touch()
        b.spawn()
        assert await handle.result(timeout=60) == 7
        keys = await backend.list_all("runs/gate-1/log/")
        before = {key: (await backend.get(key)) for key in keys}

        os.kill(a.pid, signal.SIGCONT)

        async def a_dropped() -> bool:
            return "dropped run gate-1" in a.stderr()

        await wait_until(a_dropped, 30, "agent A to drop the run")
        keys = await backend.list_all("runs/gate-1/log/")
        after = {key: (await backend.get(key)) for key in keys}
        assert after == before  # not one segment added or changed
        checked = await check_log(backend, "gate-1")
        assert checked.steps == Counter({0: 1})
        assert checked.result == 7
        assert await handle.result() == 7
        assert effect_lines(effects, "gate-1") == ["enter", "enter"]  # A and B both ran it
        assert a.stop() == 0
        assert b.stop() == 0
        status = await handle.status()
        assert status is RunStatus.COMPLETED
    finally:
        a.kill()
        b.kill()
        await backend.aclose()
