"""
The chaos test of the newer primitives: sagas (``compensate_with`` and ``revert()``),
child runs fanned out with ``asyncio.gather``, ``continue_using`` chains, and a
``compact()`` loop fed events while agents die. Three agent processes share the runs
while a killer sends SIGKILL to a random one every 0.3-0.8 s and starts it again, until
every run is done. Then every log is decoded and checked.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import anyio
import pytest

from substantial import Conductor, RunReverted, ZlibCodec
from substantial._core.status import RunStatus
from substantial._store.runs import RunStore
from substantial.backends import Backend, from_url
from substantial.codec import decode_payload
from tests import chaos_app
from tests.agents import Agent, Killer, backend_url, check_log, effect_lines
from tests.conftest import BACKENDS
from tests.harness import wait_until

# Each chaos test runs three agent processes flat out: `make test` runs the slow tests
# after the rest, two at a time, so they do not starve the suite or each other.
pytestmark = pytest.mark.slow

PROCESS_BACKENDS = [p for p in BACKENDS if p.values[0] in ("files", "redis")]
SAGAS = 6
FAN_OUTS = 3
WIDTH = 5
CHAINS = 4
LINKS = 3
COUNTERS = 4
EVENTS = 60
AGENTS = 3
KILL_EVERY = (0.3, 0.8)
DEADLINE = 120


async def _chain_links(store: RunStore, run_id: str) -> list[str]:
    """The run ids of a continuation chain, from its first run to its newest link."""
    links = [run_id]
    while True:
        meta = await store.read_meta(links[-1])
        if meta is None or not meta.continued_as:
            return links
        links.append(meta.continued_as)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", PROCESS_BACKENDS)
async def test_chaos_features(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    rng = random.Random(20240918)
    backend: Backend = from_url(url)
    store = RunStore(backend)
    # Payloads over 24 bytes (the counters' states, most results) go to blobs, and every
    # payload is compressed: stored values at rest must survive the kills as inline ones.
    env = {
        "CHAOS_LEASE": "1.5", "CHAOS_CONCURRENCY": "16", "CHAOS_POLL": "0.2",
        "CHAOS_BLOB_THRESHOLD": "24", "CHAOS_ZLIB": "1",
    }  # fmt: skip
    client = Conductor(backend, blob_threshold=24, codecs=[ZlibCodec()])
    client.register(
        chaos_app.saga, chaos_app.fan_child, chaos_app.fan_out, chaos_app.chain, chaos_app.counter
    )
    agents = [Agent(url, effects, logs, env) for _ in range(AGENTS)]
    began = time.monotonic()
    saga_ids = [f"saga-{i}" for i in range(SAGAS)]
    fan_ids = [f"fan-{i}" for i in range(FAN_OUTS)]
    chain_ids = [f"chain-{i}" for i in range(CHAINS)]
    counter_ids = [f"counter-{i}" for i in range(COUNTERS)]
    sent: dict[str, list[int]] = {}
    try:
        for agent in agents:
            agent.spawn()
        for run_id in saga_ids:
            await client.start(chaos_app.saga, run_id=run_id)
        for i, run_id in enumerate(fan_ids):
            await client.start(chaos_app.fan_out, 100 * i, WIDTH, run_id=run_id)
        for i, run_id in enumerate(chain_ids):
            await client.start(chaos_app.chain, 0, LINKS, 1000 * i, run_id=run_id)
        for run_id in counter_ids:
            await client.start(chaos_app.counter, run_id=run_id)

        async def send_events() -> None:
            # Interleaved across the counters, in bursts spread over several kills.
            for n in range(EVENTS):
                for run_id in counter_ids:
                    value = rng.randrange(1, 1000)
                    sent.setdefault(run_id, []).append(value)
                    await client.handle(run_id).send("msg", value)
                if n % 5 == 4:
                    await anyio.sleep(0.4)
            for run_id in counter_ids:
                await client.handle(run_id).send("msg", None)

        unfinished = set(saga_ids + fan_ids + chain_ids + counter_ids)

        async def all_done() -> bool:
            for run_id in sorted(unfinished):
                last = (await _chain_links(store, run_id))[-1]
                if (await client.handle(last).status()).finished:
                    unfinished.discard(run_id)
            return not unfinished

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_events)

            killer = Killer(agents, effects, rng, KILL_EVERY)
            tg.start_soon(killer.run)
            await wait_until(all_done, DEADLINE, f"all runs to finish ({kind})", every=0.5)
            tg.cancel_scope.cancel()
        wall = time.monotonic() - began

        async def schedule_empty() -> bool:
            return not await backend.list("schedule/", limit=1)

        await wait_until(schedule_empty, 30, "the schedule to empty")

        reexecuted = 0

        def count_effects(run_id: str, want: dict[str, int]) -> None:
            """Each label ran at least ``want[label]`` times; count the extra runs."""
            nonlocal reexecuted
            lines = effect_lines(effects, run_id)
            for label, times in want.items():
                assert lines.count(label) >= times, (run_id, label, lines)
            assert set(lines) == set(want), (run_id, lines)
            reexecuted += len(lines) - sum(want.values())

        # Sagas: reverted, each compensation recorded once (newest first) and run.
        for run_id in saga_ids:
            handle = client.handle(run_id)
            assert await handle.status() is RunStatus.REVERTED, run_id
            with pytest.raises(RunReverted):
                await handle.result()
            checked = await check_log(backend, run_id)
            kinds = [event.WhichOneof("kind") for event in checked.stored.events]
            assert kinds.count("reverted") == 1, (run_id, kinds)
            undone = [
                decode_payload(event.step_completed.result)
                for event in checked.stored.events
                if event.WhichOneof("kind") == "step_completed"
                and event.step_completed.name.endswith("saga_undo")
            ]
            assert undone == [10, 0], (run_id, undone)  # undo1 then undo0, once each
            failed = [
                event.step_completed
                for event in checked.stored.events
                if event.WhichOneof("kind") == "step_completed"
                and event.step_completed.WhichOneof("outcome") == "failure"
            ]
            assert len(failed) == 1, (run_id, failed)
            assert failed[0].failure.type == "ValueError", (run_id, failed)
            count_effects(run_id, {"do0": 1, "do1": 1, "do2": 1, "undo1": 1, "undo0": 1})

        # Fan-outs: the sum of five children, each completed; five starts, five ends.
        for index, run_id in enumerate(fan_ids):
            values = [100 * index + i for i in range(WIDTH)]
            assert await client.handle(run_id).result() == 10 * sum(values), run_id
            checked = await check_log(backend, run_id)
            assert checked.result == 10 * sum(values)
            events = checked.stored.events
            started = [e.child_started.run_id for e in events if e.HasField("child_started")]
            ended = [e.child_ended.run_id for e in events if e.HasField("child_ended")]
            assert len(started) == WIDTH, (run_id, started)
            assert len(set(started)) == WIDTH, (run_id, started)
            assert len(ended) == WIDTH, (run_id, ended)
            assert set(ended) == set(started), (run_id, ended)
            results = []
            for child_id in started:
                child = client.handle(child_id)
                assert await child.status() is RunStatus.COMPLETED, child_id
                results.append(await child.result())
                assert (await check_log(backend, child_id)).result == results[-1]
                count_effects(child_id, {"child": 1})
            assert sorted(results) == [10 * v for v in values], (run_id, results)

        # Chains: the first handle's result is the last link's; each link ran once.
        for index, run_id in enumerate(chain_ids):
            want = 1000 * index + 10 * sum(range(1, LINKS + 1))
            assert await client.handle(run_id).result() == want, run_id
            links = await _chain_links(store, run_id)
            assert len(links) == LINKS, (run_id, links)
            for link, link_id in enumerate(links):
                status = await client.handle(link_id).status()
                last = link == LINKS - 1
                assert status is (RunStatus.COMPLETED if last else RunStatus.CONTINUED), link_id
                checked = await check_log(backend, link_id)
                kinds = [event.WhichOneof("kind") for event in checked.stored.events]
                assert kinds.count("continued_as") == (0 if last else 1), (link_id, kinds)
                assert len(checked.steps) == 1, (link_id, checked.steps)
                count_effects(link_id, {f"link{link}": 1})
            assert (await check_log(backend, links[-1])).result == want

        # Counters: every event counted once, through compactions and kills.
        for run_id in counter_ids:
            want = {"total": sum(sent[run_id]), "seen": EVENTS}
            assert await client.handle(run_id).result() == want, run_id
            stored = await store.read_log(run_id)  # raises CorruptLog on a gap
            kinds = [event.WhichOneof("kind") for event in stored.events]
            assert kinds[0] == "started", (run_id, kinds)
            assert kinds.count("completed") == 1, (run_id, kinds)
            assert len(kinds) < 2 * EVENTS, (run_id, len(kinds))  # compacted on the way
            count_effects(run_id, {"add": EVENTS})
        assert await backend.list("blobs/", limit=1)  # the states went through blobs

        print(
            f"\nchaos-features[{kind}]: {killer.kills} kills, "
            f"{reexecuted} steps re-executed, {wall:.1f}s"
        )
    finally:
        for agent in agents:
            agent.kill()
        await backend.aclose()
