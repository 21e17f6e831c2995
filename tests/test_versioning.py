"""
``Context.version``: runs started on old code keep the old path after a deploy, runs
that reach the change on new code take the new one, and the answer never flips.
"""

from __future__ import annotations

from typing import Any

from substantial import Conductor, Context, RunStatus, workflow
from substantial.backends import Backend
from substantial.testing import Replayer
from tests.harness import WAIT, wait_for_status

NAME = "versioning.order"
answers: dict[str, list[bool]] = {}


def prepare(order: str) -> Any:
    def prepare_step() -> str:
        return f"prepared {order}"

    return prepare_step


def prepare_with_discount(order: str) -> Any:
    def discounted_step() -> str:
        return f"prepared {order} at 10% off"

    return discounted_step


def ship(what: str) -> Any:
    def ship_step() -> str:
        return f"{what}, shipped"

    return ship_step


@workflow(name=NAME)
async def order_v1(c: Context, order: str) -> str:
    prepared = await c.save(prepare(order))
    how = await c.receive("ship")
    return await c.save(ship(f"{prepared}, {how}"))


@workflow(name=NAME)
async def order_v2(c: Context, order: str) -> str:
    discounted = c.version("discount")
    answers.setdefault(c.run_id, []).append(discounted)
    if discounted:
        prepared = await c.save(prepare_with_discount(order))
    else:
        prepared = await c.save(prepare(order))
    how = await c.receive("ship")
    again = c.version("discount")  # the same question later gets the same answer
    answers[c.run_id].append(again)
    return await c.save(ship(f"{prepared}, {how}"))


def conductor_with(backend: Backend, code: Any) -> Conductor:
    conductor = Conductor(backend, lease=3.0, park_retry=0.2, poll_interval=0.05)
    conductor.register(code)
    return conductor


async def test_runs_started_before_a_deploy_keep_the_old_path(backend: Backend) -> None:
    answers.clear()
    old_ids = [f"old-{i}" for i in range(3)]
    async with conductor_with(backend, order_v1) as v1:
        for run_id in old_ids:
            await v1.start(order_v1, run_id, run_id=run_id)
        for run_id in old_ids:  # each has prepared on v1 and waits for "ship"
            await wait_for_status(v1.handle(run_id), RunStatus.WAITING)

    # the deploy: a new conductor, the v2 code under the same workflow name
    async with conductor_with(backend, order_v2) as v2:
        new_ids = [f"new-{i}" for i in range(3)]
        for run_id in new_ids:
            await v2.start(order_v2, run_id, run_id=run_id)
        for run_id in new_ids:
            await wait_for_status(v2.handle(run_id), RunStatus.WAITING)
        for run_id in old_ids + new_ids:
            await v2.handle(run_id).send("ship", "by post")
        for run_id in old_ids:
            result = await v2.handle(run_id).result(timeout=WAIT)
            assert result == f"prepared {run_id}, by post, shipped"
        for run_id in new_ids:
            result = await v2.handle(run_id).result(timeout=WAIT)
            assert result == f"prepared {run_id} at 10% off, by post, shipped"
        for run_id in old_ids + new_ids:  # none was parked on a NonDeterminismError
            meta = await v2.store.read_meta(run_id)
            assert meta is not None
            assert meta.parked_reason == ""

    # each v2 wake-up asked twice; the answer never flipped
    for run_id in old_ids:
        assert answers[run_id]
        assert set(answers[run_id]) == {False}
    for run_id in new_ids:
        assert answers[run_id]
        assert set(answers[run_id]) == {True}
        kinds = [event.kind for event in await v2.handle(run_id).history()]
        assert kinds.count("version_marked") == 1  # recorded once, where first asked
    for run_id in old_ids:
        kinds = [event.kind for event in await v2.handle(run_id).history()]
        assert "version_marked" not in kinds

    # replaying the finished logs again with v2 gives the same answers and outcomes
    answers.clear()
    replayer = Replayer(order_v2)
    for run_id in old_ids + new_ids:
        outcome = await replayer.replay_run(backend, run_id)
        assert outcome is not None
        assert outcome.WhichOneof("kind") == "completed"
        assert set(answers[run_id]) == {run_id.startswith("new")}
