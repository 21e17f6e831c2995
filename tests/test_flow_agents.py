"""
Flow control across agent processes killed with SIGKILL: a workflow concurrency of 2, a
step limit of 3 and a rate limit hold across 3 agents, and every run completes.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from substantial import Conductor
from substantial.backends import from_url
from tests import flow_app
from tests.agents import Agent, Killer, backend_url, check_log
from tests.harness import wait_until
from tests.test_agents import PROCESS_BACKENDS

APP = Path(flow_app.__file__)
RATE, PER_S = 3, 2.0
#: A limit counts a start when an agent admits the step (takes its token); the step's
#: code records its start when a worker thread picks it up, up to this much later on
#: a loaded machine, so windows are checked this much shorter than ``per``.
START_LATENCY_S = 0.3


def _intervals(effects: Path, name: str) -> tuple[list[tuple[int, int]], list[int]]:
    """Each step that ran to its end, as (start, end) ns; and every start."""
    opened: dict[str, int] = {}
    spans: list[tuple[int, int]] = []
    starts: list[int] = []
    path = effects / name
    for line in path.read_text().splitlines() if path.exists() else []:
        what, run_id, at = line.split()
        if what == "start":
            opened[run_id] = int(at)
            starts.append(int(at))
        elif run_id in opened:
            spans.append((opened.pop(run_id), int(at)))
    return spans, starts


def _most_at_once(spans: list[tuple[int, int]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, change in edges:
        now += change
        most = max(most, now)
    return most


@pytest.mark.slow
@pytest.mark.parametrize("kind", PROCESS_BACKENDS)
async def test_limits_hold_across_killed_agent_processes(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    client = Conductor(from_url(url))
    client.register(flow_app.pair, flow_app.limited, flow_app.rated)
    await client.set_limit("three", concurrency=3)
    await client.set_limit("rated", rate=RATE, per=timedelta(seconds=PER_S))
    agents = [Agent(url, effects, tmp_path, app=APP) for _ in range(3)]
    handles = []
    try:
        for agent in agents:
            agent.spawn()
        for i in range(8):
            handles.append(await client.start(flow_app.pair, run_id=f"pair-{i}"))
            handles.append(await client.start(flow_app.limited, run_id=f"limited-{i}"))
        for i in range(9):  # three windows of the rate at least
            handles.append(await client.start(flow_app.rated, run_id=f"rated-{i}"))
        killer = Killer(agents, effects, random.Random(14), every=(0.3, 0.8))

        async def all_done() -> bool:
            return all([(await h.status()).finished for h in handles])

        async with anyio.create_task_group() as tg:
            tg.start_soon(killer.run)
            await wait_until(all_done, 180, "every run to finish", every=0.3)
            tg.cancel_scope.cancel()
    finally:
        for agent in agents:
            agent.kill()
    backend = from_url(url)
    for handle in handles:
        assert await handle.result() == 1
        await check_log(backend, handle.run_id)
    pairs, _ = _intervals(effects, "pair")
    assert _most_at_once(pairs) <= 2
    limited, _ = _intervals(effects, "limited")
    assert _most_at_once(limited) <= 3
    _, starts = _intervals(effects, "rated")
    window = int((PER_S - START_LATENCY_S) * 1e9)
    for start in starts:
        assert sum(start <= other < start + window for other in starts) <= RATE
    print(
        f"\n{kind}: {killer.kills} kills; most at once: pair {_most_at_once(pairs)}, "
        f"limited {_most_at_once(limited)}; rated starts {len(starts)}"
    )
    await backend.aclose()
    await client.aclose()
