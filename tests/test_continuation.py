"""
``continue_using``: a run ends CONTINUED and a new run ``{root}.{n}`` carries on with a
fresh log; handles to the first run follow the chain to its end.
"""

from __future__ import annotations

import itertools

import pytest

from substantial import Conductor, Context, RunFailed, RunStatus, workflow
from tests.harness import WAIT


@workflow(name="continuation.count")
async def count(c: Context, n: int, total: int) -> int:
    """Adds ``n`` to ``total`` in a step, then continues with ``n - 1`` until 0."""
    total = await c.save(lambda: total + n)
    if n > 1:
        await c.continue_using(count, n - 1, total)
    return await c.continue_using(finish, total)


@workflow(name="continuation.finish")
async def finish(c: Context, total: int) -> str:
    await c.sleep(0.05)
    return f"total {total}"


@workflow(name="continuation.fail")
async def fail_later(c: Context, hops: int) -> None:
    if hops:
        await c.continue_using(fail_later, hops - 1)
    raise ValueError("the end of the chain fails")


pytestmark = pytest.mark.conductor(count, finish, fail_later)


async def test_a_chain_of_runs_gives_its_result_to_the_first_handle(
    conductor: Conductor,
) -> None:
    handle = await conductor.start(count, 3, 0, run_id="chain")
    assert await handle.result(timeout=WAIT) == "total 6"
    # chain -> chain.1 -> chain.2 (count), then chain.3 (finish)
    ids = ["chain", "chain.1", "chain.2", "chain.3"]
    for run_id in ids[:-1]:
        assert await conductor.handle(run_id).status() is RunStatus.CONTINUED
    assert await conductor.handle("chain.3").status() is RunStatus.COMPLETED
    for here, following in itertools.pairwise(ids):
        history = await conductor.handle(here).history()
        assert history[-1].kind == "continued_as"
        assert history[-1].details["run_id"] == following
        started = (await conductor.handle(following).history())[0]
        assert started.kind == "started"
        assert started.details["continued_from"] == here
        assert started.details["chain_root"] == "chain"
    # each run has a fresh log: its start, one step (or a sleep), its end
    first = [event.kind for event in await handle.history()]
    assert first == ["started", "step_completed", "continued_as"]
    middle = await conductor.handle("chain.1").history()
    assert middle[0].details["args"] == [[2, 3], {}]
    assert [event.kind for event in middle] == first
    # any link's handle reaches the same end
    assert await conductor.handle("chain.2").result(timeout=WAIT) == "total 6"


async def test_a_chain_that_ends_failed_fails_the_first_handle(conductor: Conductor) -> None:
    handle = await conductor.start(fail_later, 2, run_id="falls")
    with pytest.raises(RunFailed) as caught:
        await handle.result(timeout=WAIT)
    assert caught.value.run_id == "falls.2"  # the run that failed
    assert caught.value.type_name == "ValueError"
    assert await handle.status() is RunStatus.CONTINUED
