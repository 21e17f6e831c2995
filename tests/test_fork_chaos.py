"""
A fork under SIGKILL (issue #16): forks of finished runs are run by agent processes that
a killer sends SIGKILL to and starts again; each fork's log records each step once, the
steps before the cut are never executed by the fork, and every fork ends right.
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest

from substantial import Conductor, RunStatus
from substantial.backends import from_url
from tests import chaos_app
from tests.agents import Agent, Killer, backend_url, check_log, effect_lines
from tests.harness import wait_until

pytestmark = pytest.mark.slow

RUNS = 8
STEPS = 6  # positions: s0 #0, s1 #1, s2 #2, s3 #3, the sleep #4, s4 #5, s5 #6
CUT = 2


@pytest.mark.timeout(240)
async def test_forks_record_each_step_once_under_sigkill(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await backend_url("files", request, tmp_path)
    effects, logs = tmp_path / "effects", tmp_path / "logs"
    effects.mkdir()
    logs.mkdir()
    backend = from_url(url)
    client = Conductor(backend)
    client.register(chaos_app.steps)
    env = {"CHAOS_LEASE": "1.5", "CHAOS_POLL": "0.1", "CHAOS_STEP_SECONDS": "0.2"}
    agents = [Agent(url, effects, logs, env) for _ in range(2)]
    try:
        for agent in agents:
            agent.spawn()
        originals = [client.handle(f"r-{i}") for i in range(RUNS)]
        for handle in originals:
            await client.start(chaos_app.steps, STEPS, run_id=handle.run_id)
        want = [10 * n for n in range(STEPS)]
        for handle in originals:
            assert await handle.result(timeout=120) == want

        killer = Killer(agents, effects, random.Random(16), (0.3, 0.6))
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer.run)
            forks = [
                await handle.fork(at_step=CUT, run_id=f"{handle.run_id}-f") for handle in originals
            ]

            async def all_done() -> bool:
                statuses = [await fork.status() for fork in forks]
                return all(status is RunStatus.COMPLETED for status in statuses)

            await wait_until(all_done, 200, "every fork to complete", every=0.3)
            tg.cancel_scope.cancel()

        for fork in forks:
            assert await fork.result() == want
            checked = await check_log(backend, fork.run_id)  # each step recorded once
            assert sorted(checked.steps) == [0, 1, 2, 3, 5, 6]
            executed = set(effect_lines(effects, fork.run_id))
            assert executed == {"s2", "s3", "s4", "s5"}, fork.run_id  # not s0, s1
        print(f"\nfork chaos: {RUNS} forks, {killer.kills} kills")
    finally:
        for agent in agents:
            agent.kill()
        await backend.aclose()
