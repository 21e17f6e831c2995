"""
Agents: the per-agent concurrency limit, fairness under a run hot with events, graceful
shutdown (task cancel, SIGTERM, SIGINT), and clock skew between agent processes.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from substantial import Conductor, Context, workflow
from substantial._core.status import RunStatus
from substantial._store.keys import lease_key
from substantial._store.runs import RunStore
from substantial.backends import Backend, from_url
from tests import chaos_app
from tests.agents import Agent, backend_url, check_log, effect_lines, effects_written
from tests.conftest import BACKENDS
from tests.harness import wait_until

inside = {"now": 0, "most": 0}


@workflow(name="agents.busy")
async def busy(c: Context) -> int:
    async def step() -> int:
        inside["now"] += 1
        inside["most"] = max(inside["most"], inside["now"])
        try:
            await anyio.sleep(0.05)  # the work: other runs may be claimed meanwhile
        finally:
            inside["now"] -= 1
        return 1

    return await c.save(step) + await c.save(step)


async def test_an_agent_never_runs_more_than_its_concurrency(backend: Backend) -> None:
    inside.update(now=0, most=0)
    conductor = Conductor(backend, concurrency=2, poll_interval=0.05)
    conductor.register(busy)
    async with conductor:
        handles = [await conductor.start(busy, run_id=f"busy-{i}") for i in range(8)]
        for handle in handles:
            assert await handle.result(timeout=60) == 2
    assert 1 <= inside["most"] <= 2


@workflow(name="agents.hot")
async def hot(c: Context) -> int:
    count = 0
    while await c.receive("tick") != "stop":
        count += 1
    return count


@workflow(name="agents.cold")
async def cold(c: Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await c.save(lambda i=i: i)  # type: ignore[misc]
    return total


async def test_a_run_hot_with_events_does_not_starve_the_others(backend: Backend) -> None:
    conductor = Conductor(backend, concurrency=1, poll_interval=0.05)
    conductor.register(hot, cold)
    sent = 0
    async with conductor:
        hot_run = await conductor.start(hot, run_id="hot")
        cold_runs: list[object] = []

        stop_feeding = anyio.Event()

        async def feed() -> None:
            nonlocal sent
            while not stop_feeding.is_set():
                await hot_run.send("tick", sent)
                sent += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            await wait_until(lambda: _merged_some(backend, "hot"), 30, "the hot run to take ticks")
            cold_runs = [await conductor.start(cold, 4, run_id=f"cold-{i}") for i in range(5)]
            for handle in cold_runs:
                assert await handle.result(timeout=60) == 6  # type: ignore[attr-defined]
            assert await hot_run.status() is not RunStatus.COMPLETED  # still being fed
            before = await _merged(backend, "hot")
            await wait_until(
                lambda: _merged_more(backend, "hot", before), 30, "more ticks after the others"
            )
            stop_feeding.set()
        await hot_run.send("tick", "stop")
        assert await hot_run.result(timeout=60) == sent
    checked = await check_log(backend, "hot")
    assert len(checked.events) == sent + 1  # every tick merged once, and the stop


async def _merged_some(backend: Backend, run_id: str) -> bool:
    return await _merged_more(backend, run_id, 0)


async def _merged_more(backend: Backend, run_id: str, than: int) -> bool:
    return await _merged(backend, run_id) > than


async def _merged(backend: Backend, run_id: str) -> int:
    stored = await RunStore(backend).read_log(run_id)  # a live log: read, not checked
    return sum(event.WhichOneof("kind") == "event_received" for event in stored.events)


step_done = Counter[str]()


@workflow(name="agents.held")
async def held(c: Context) -> str:
    async def step() -> str:
        gates[c.run_id + ":entered"].set()
        await gates[c.run_id + ":go"].wait()
        step_done[c.run_id] += 1
        return "stepped"

    result = await c.save(step)
    await c.receive("never")
    return result


gates: dict[str, anyio.Event] = {}


def _gate(run_id: str) -> tuple[anyio.Event, anyio.Event]:
    gates[run_id + ":entered"] = anyio.Event()
    gates[run_id + ":go"] = anyio.Event()
    return gates[run_id + ":entered"], gates[run_id + ":go"]


async def test_cancelling_the_agent_finishes_in_flight_steps_and_releases(
    backend: Backend,
) -> None:
    step_done.clear()
    conductor = Conductor(backend, shutdown_grace=30, poll_interval=0.05)
    conductor.register(held, cold)
    entered, go = _gate("held-1")
    agent = conductor.run()
    first = await conductor.start(held, run_id="held-1")
    await entered.wait()
    agent.cancel()
    later = await conductor.start(cold, 1, run_id="later")  # must not be taken any more
    go.set()
    with anyio.fail_after(30):
        await agent
    assert step_done["held-1"] == 1
    checked = await check_log(backend, "held-1")
    assert checked.steps == Counter({0: 1})  # the in-flight step was recorded
    assert await first.status() is RunStatus.WAITING
    assert await backend.get(lease_key("held-1")) is None  # released
    assert await backend.get(lease_key("later")) is None
    assert len((await check_log(backend, "later")).stored.events) == 1  # only its start
    assert await later.status() is RunStatus.PENDING


async def test_a_run_claimed_as_the_agent_stops_has_its_lease_released(
    backend: Backend,
) -> None:
    # The agent stops between claiming a run and starting its wake-up: the wake-up's
    # task still begins (anyio cancels at a checkpoint, not before the first step), and
    # its shielded clean-up releases the lease (else the run would wait a lease length).
    conductor = Conductor(backend, shutdown_grace=5)
    conductor.register(cold)
    await conductor.start(cold, 1, run_id="claimed")
    async with anyio.create_task_group() as work:
        claimed, _ = await conductor._claim_due(work)
        assert claimed == 1
        work.cancel_scope.cancel()  # before the wake-up's task took a step
    with anyio.fail_after(5):
        await conductor._processor.drain()
    assert await backend.get(lease_key("claimed")) is None
    assert not conductor._processor.active


async def test_a_step_past_the_grace_period_is_abandoned_and_run_again_later(
    backend: Backend,
) -> None:
    step_done.clear()
    conductor = Conductor(backend, shutdown_grace=0.2, poll_interval=0.05)
    conductor.register(held)
    entered, go = _gate("held-2")
    agent = conductor.run()
    first = await conductor.start(held, run_id="held-2")
    await entered.wait()
    agent.cancel()
    with anyio.fail_after(30):
        await agent  # returns after the grace period although the step never ends
    assert await backend.get(lease_key("held-2")) is None
    assert step_done["held-2"] == 0
    entered, go = _gate("held-2")
    go.set()
    async with conductor:
        await wait_until(lambda: _is(first, RunStatus.WAITING), 30, "the run to be retried")
    assert step_done["held-2"] == 1


async def _is(handle: object, status: RunStatus) -> bool:
    return await handle.status() is status  # type: ignore[attr-defined,no-any-return]


PROCESS_BACKENDS = [p for p in BACKENDS if p.values[0] != "memory"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signalled_agent_process_finishes_its_step_and_exits_0(
    signum: int, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'store'}"
    effects = tmp_path / "effects"
    effects.mkdir()
    backend = from_url(url)
    client = Conductor(backend)
    client.register(chaos_app.gate)
    agent = Agent(url, effects, tmp_path, {"CHAOS_GRACE": "30", "CHAOS_POLL": "0.05"})
    try:
        agent.spawn()
        agent.wait_ready()
        handle = await client.start(chaos_app.gate, run_id="gate-signal")

        async def entered() -> bool:
            return effect_lines(effects, "gate-signal") == ["enter"]

        await wait_until(entered, 30, "the agent to enter the step")
        assert agent.process is not None
        os.kill(agent.pid, signum)
        (effects / "open").touch()  # the step may finish now, within the grace period
        assert await anyio.to_thread.run_sync(agent.process.wait, 30) == 0
        assert await handle.result(timeout=5) == 7
        assert await backend.get(lease_key("gate-signal")) is None
        assert effect_lines(effects, "gate-signal") == ["enter"]
    finally:
        agent.kill()


@pytest.mark.slow
@pytest.mark.parametrize("kind", PROCESS_BACKENDS)
async def test_agents_with_skewed_clocks_never_corrupt_a_log_or_lose_a_run(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """
    Three agents, clocks at -3, 0 and +3 lease lengths, share runs while one of them is
    killed now and then: work may be delayed or steps repeated, but every run finishes
    with the right result and every log is well formed.
    """
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    backend = from_url(url)
    client = Conductor(backend)
    client.register(chaos_app.mix, chaos_app.steps)
    lease_ms = 1000
    # Steps last up to 0.3 s, so the skewed agents see each other's leases wrongly often.
    env = {"CHAOS_LEASE": "1", "CHAOS_STEP_SECONDS": "0.3", "CHAOS_CONCURRENCY": "4"}
    agents = [
        Agent(url, effects, tmp_path, {**env, "CHAOS_CLOCK_OFFSET_MS": str(skew)})
        for skew in (-3 * lease_ms, 0, 3 * lease_ms)
    ]
    try:
        for agent in agents:
            agent.spawn()
        runs = {f"skew-steps-{i}": [0, 10, 20, 30] for i in range(12)}
        for run_id in runs:
            await client.start(chaos_app.steps, 4, run_id=run_id)
        for i in range(12):
            run_id = f"skew-mix-{i}"
            await client.start(chaos_app.mix, 1, run_id=run_id)
            await client.handle(run_id).send("h", i)
            await client.handle(run_id).send("x", i + 1)
            runs[run_id] = {"a": 10, "x": i + 1, "b": 10 * (i + 1), "h": [i], "d": 10 * i}
        pending = set(runs)

        async def done() -> bool:
            for run_id in sorted(pending):
                if (await client.handle(run_id).status()).finished:
                    pending.discard(run_id)
            return not pending

        async with anyio.create_task_group() as tg:

            async def kill_now_and_then() -> None:
                # A kill waits for its victim to serve and for a step to run since the
                # last one: on a loaded machine agents still progress between kills.
                written = -1
                for victim in [0, 2, 1, 0, 2, 1] * 5:
                    await anyio.sleep(1)
                    await wait_until(
                        lambda v=victim, w=written: (
                            agents[v].is_ready() and effects_written(effects) != w
                        ),
                        120,
                        f"agent {victim} to serve and a step to run",
                        every=0.2,
                    )
                    written = effects_written(effects)
                    agents[victim].kill()
                    agents[victim].spawn()

            tg.start_soon(kill_now_and_then)
            await wait_until(done, 120, "every run to finish", every=0.3)
            tg.cancel_scope.cancel()
        repeated = 0
        for run_id, want in runs.items():
            assert await client.handle(run_id).result() == want
            checked = await check_log(backend, run_id)
            assert checked.result == want
            lines = effect_lines(effects, run_id)
            assert set(lines) == ({"a", "b", "d"} if "mix" in run_id else {"s0", "s1", "s2", "s3"})
            repeated += len(lines) - len(set(lines))
        print(f"\nclock skew [{kind}]: {len(runs)} runs, {repeated} steps repeated")
    finally:
        for agent in agents:
            agent.kill()
        await backend.aclose()
