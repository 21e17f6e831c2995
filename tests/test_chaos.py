"""
The chaos test: three agent processes share 100+ runs while a killer sends SIGKILL to a
random one every 0.2-0.5 s and starts it again, until every run is done. Then every log
is decoded and checked: results right, each step recorded once (executed at least once),
each event merged once, segments contiguous.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import anyio
import pytest

from substantial import Conductor
from substantial._core.status import RunStatus
from substantial.backends import from_url
from tests import chaos_app
from tests.agents import Agent, Killer, backend_url, check_log, effect_lines
from tests.conftest import BACKENDS
from tests.harness import wait_until

# Each chaos test runs three agent processes flat out: `make test` runs the slow tests
# after the rest, two at a time, so they do not starve the suite or each other.
pytestmark = pytest.mark.slow

MIX_RUNS = 70
STEP_RUNS = 40
# moto's S3 server answers a few hundred requests a second on this machine, a tenth of
# what redis does: on s3 the test runs half the runs (still ~30 kills), in a third of
# the time it took with all of them.
S3_RUNS = (36, 20)
STEP_COUNT = 5
HANDLED = 3
AGENTS = 3
# Seconds between kills. moto's S3 server takes ~100 writes/s and a respawned agent
# needs about a second to import, open its client and check the bucket, so killing
# every fraction of a second there leaves agents no life at all: on s3, every 1-2 s.
KILL_EVERY = {"s3": (1.0, 2.0)}
DEFAULT_KILL_EVERY = (0.2, 0.5)


# Agent processes cannot share a memory backend: it lives in one process.
SHARED_BACKENDS = [param for param in BACKENDS if param.values[0] != "memory"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
async def test_chaos(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    rng = random.Random(20240917)
    backend = from_url(url)
    client = Conductor(backend)
    client.register(chaos_app.mix, chaos_app.steps)
    env = {"CHAOS_LEASE": "1.5", "CHAOS_CONCURRENCY": "16", "CHAOS_POLL": "0.2"}
    agents = [Agent(url, effects, logs, env) for _ in range(AGENTS)]
    began = time.monotonic()
    expected: dict[str, object] = {}
    try:
        for agent in agents:
            agent.spawn()
        mix_runs, step_runs = S3_RUNS if kind == "s3" else (MIX_RUNS, STEP_RUNS)
        mix_ids = [f"mix-{i}" for i in range(mix_runs)]
        for run_id in mix_ids:
            await client.start(chaos_app.mix, HANDLED, run_id=run_id)
        for i in range(step_runs):
            await client.start(chaos_app.steps, STEP_COUNT, run_id=f"steps-{i}")
            expected[f"steps-{i}"] = [10 * n for n in range(STEP_COUNT)]

        async def send_events() -> None:
            # Half the runs get their events at once, the rest while agents die.
            for index, run_id in enumerate(mix_ids):
                if index == mix_runs // 2:
                    await anyio.sleep(1)
                x = rng.randrange(1, 1000)
                values = [rng.randrange(1, 1000) for _ in range(HANDLED)]
                handle = client.handle(run_id)
                for value in values:
                    await handle.send("h", value)
                await handle.send("x", x)
                total = sum(values)
                expected[run_id] = {
                    "a": 10, "x": x, "b": 10 * x, "h": sorted(values), "d": 10 * total
                }  # fmt: skip

        unfinished = set(mix_ids) | {f"steps-{i}" for i in range(step_runs)}

        async def all_done() -> bool:
            for run_id in sorted(unfinished):
                status = await client.handle(run_id).status()
                if status.finished:
                    unfinished.discard(run_id)
            return not unfinished

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_events)

            killer = Killer(agents, effects, rng, KILL_EVERY.get(kind, DEFAULT_KILL_EVERY))
            tg.start_soon(killer.run)
            await wait_until(all_done, 200, f"all runs to finish ({kind})", every=0.5)
            tg.cancel_scope.cancel()
        wall = time.monotonic() - began

        # Stale schedule entries of finished runs are cleaned up by the live agents.
        async def schedule_empty() -> bool:
            return not await backend.list("schedule/", limit=1)

        await wait_until(schedule_empty, 30, "the schedule to empty")

        reexecuted = 0
        step_total = 0
        for run_id, want in sorted(expected.items()):
            handle = client.handle(run_id)
            assert await handle.status() is RunStatus.COMPLETED, run_id
            assert await handle.result() == want, run_id
            checked = await check_log(backend, run_id)
            assert checked.result == want
            lines = effect_lines(effects, run_id)
            labels = set(lines)
            # every step ran at least once, and each recorded once (check_log)
            assert len(labels) == len(checked.steps), (run_id, lines, checked.steps)
            step_total += len(labels)
            reexecuted += len(lines) - len(labels)
            if run_id.startswith("mix-"):
                assert len(checked.events) == HANDLED + 1  # each sent event merged once
        print(
            f"\nchaos[{kind}]: {len(expected)} runs, {step_total} steps, {killer.kills} kills, "
            f"{reexecuted} steps re-executed, {wall:.1f}s"
        )
    finally:
        for agent in agents:
            agent.kill()
        await backend.aclose()
