"""
Forks and retries (issue #16): a fork's log is its original's up to, not including, the
first record of the step it is cut at; that step and what follows run again with the
code agents have now, what came before is replayed, and the original is never written.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from substantial import (
    Conductor,
    Context,
    ForkError,
    RetryPolicy,
    RunFailed,
    RunStatus,
    workflow,
)
from substantial._store.forks import cut_at_step
from substantial._store.keys import fork_key, log_prefix
from substantial._store.segments import StoredLog
from substantial.backends import Backend, MemoryBackend
from substantial.ops import describe_run
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor, wait_for_status

NAME = "fork.five_steps"
ONCE = RetryPolicy(max_attempts=1)
#: (run id, step) -> how many times the step function ran
executed: Counter[tuple[str, int]] = Counter()


def step(c: Context, i: int, broken: bool = False) -> Any:
    def work() -> int:
        executed[c.run_id, i] += 1
        if broken:
            raise ValueError(f"step {i} is broken")
        return i * 10

    return work


@workflow(name=NAME)
async def five_steps(c: Context, base: int) -> int:
    total = base
    for i in range(5):
        total += await c.save(step(c, i, broken=i == 3), retry=ONCE)
    return total


@workflow(name=NAME)
async def five_steps_fixed(c: Context, base: int) -> int:
    total = base
    for i in range(5):
        total += await c.save(step(c, i), retry=ONCE)
    return total


@pytest.mark.conductor(five_steps)
async def test_retry_runs_the_failed_step_and_what_follows(conductor: Conductor) -> None:
    executed.clear()
    original = await conductor.start(five_steps, 1, run_id="order-1")
    with pytest.raises(RunFailed, match="step 3 is broken"):
        await original.result(timeout=WAIT)
    before = await _segments(conductor.backend, "order-1")

    conductor.register(five_steps_fixed, replace=True)  # the deploy of the fix
    fork = await original.retry()
    assert fork.run_id == "order-1-retry"
    assert await fork.result(timeout=WAIT) == 1 + 0 + 10 + 20 + 30 + 40

    # steps 0-2 were replayed from the copied log, 3 and 4 ran with the fixed code
    assert {i: executed["order-1-retry", i] for i in range(5)} == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1}
    assert [executed["order-1", i] for i in range(5)] == [1, 1, 1, 1, 0]
    assert await _segments(conductor.backend, "order-1") == before  # never written

    # both sides say so
    started = (await fork.history())[0]
    assert started.details["forked_from"] == "order-1"
    assert started.details["fork_step"] == 3
    forked = [e for e in await original.history() if e.kind == "forked"]
    assert [(e.details["run_id"], e.details["step"], e.segment) for e in forked] == [
        ("order-1-retry", 3, -1)
    ]
    shown = await describe_run(conductor.backend, "order-1")
    assert [(f.run_id, f.step, f.retry) for f in shown.forks] == [("order-1-retry", 3, True)]
    shown_fork = await describe_run(conductor.backend, "order-1-retry")
    assert (shown_fork.summary.forked_from, shown_fork.summary.fork_step) == ("order-1", 3)
    assert shown_fork.summary.status is RunStatus.COMPLETED

    # retrying again makes no second fork
    assert (await original.retry()).run_id == "order-1-retry"
    assert len([e for e in await original.history() if e.kind == "forked"]) == 1


async def _segments(backend: Backend, run_id: str) -> list[bytes]:
    keys = await backend.list_all(log_prefix(run_id))
    return [entry[0] for entry in await backend.get_many(keys) if entry is not None]


@workflow(name="fork.mixed")
async def mixed(c: Context) -> list[Any]:
    got = [await c.save(lambda: "a")]  # 0
    await c.sleep(timedelta(seconds=5))  # 1
    got.append(await c.receive("x"))  # 2 (no record of its own)
    got.append(await c.save(lambda: c.random()))  # 3
    got.append(await c.save(lambda: "d"))  # 4
    return got


async def test_fork_at_a_step_keeps_what_came_before_it() -> None:
    async with make_conductor(MemoryBackend(), mixed, virtual_clock=True) as conductor:
        original = await conductor.start(mixed, run_id="m")
        await wait_for_status(original, RunStatus.WAITING)
        await original.send("x", "sent")
        first = await original.result(timeout=WAIT)

        fork = await original.fork(at_step=3, run_id="m-fork")
        again = await fork.result(timeout=WAIT)
        assert again[:2] == ["a", "sent"]  # replayed: the event is in the copied prefix
        assert again[2] == first[2]  # same seed: the run's randomness replays the same
        kinds = [e.kind for e in await fork.history()]
        assert kinds[:5] == [
            "started",
            "step_completed",
            "timer_started",
            "timer_fired",
            "event_received",
        ]
        assert kinds.count("event_received") == 1

        # forking at the sleep starts the timer again
        at_sleep = await original.fork(at_step=1)
        await wait_for_status(at_sleep, RunStatus.SLEEPING, RunStatus.WAITING)
        assert [e.kind for e in await at_sleep.history()][:2] == ["started", "step_completed"]
        # the same id and step again is the same fork
        assert (await original.fork(at_step=3, run_id="m-fork")).run_id == "m-fork"


async def test_what_cannot_be_forked_is_a_named_error() -> None:
    async with make_conductor(MemoryBackend(), mixed, five_steps, virtual_clock=True) as c:
        run = await c.start(mixed, run_id="m")
        await wait_for_status(run, RunStatus.WAITING)
        with pytest.raises(ForkError, match=r"records nothing at #2 .*recorded: #0, #1"):
            await run.fork(at_step=2)
        with pytest.raises(ForkError, match="it has not failed"):
            await run.retry()
        other = await c.start(five_steps, 1, run_id="other")
        with pytest.raises(ForkError, match="'other' is taken by another run"):
            await run.fork(at_step=1, run_id="other")
        with pytest.raises(ForkError, match="at_step must be a position"):
            await other.fork(at_step=-1)


async def renamed_first_step(c: Context, base: int) -> int:
    total = base + await c.save(lambda: 0)  # another step at #0: the prefix no longer fits
    for i in range(1, 5):
        total += await c.save(step(c, i))
    return total


async def test_a_fork_whose_prefix_no_longer_replays_is_parked() -> None:
    async with make_conductor(MemoryBackend(), five_steps, virtual_clock=True) as conductor:
        original = await conductor.start(five_steps, 1, run_id="p")
        with pytest.raises(RunFailed):
            await original.result(timeout=WAIT)
        conductor.register(_renamed(), replace=True)
        fork = await original.retry()
        await wait_for_status(fork, RunStatus.PARKED)
        details = await describe_run(conductor.backend, fork.run_id)
        assert "does not replay at position 0" in details.summary.parked_reason


def _renamed() -> Any:
    @workflow(name=NAME)
    async def five_steps_renamed(c: Context, base: int) -> int:
        return await renamed_first_step(c, base)

    return five_steps_renamed


@workflow(name="fork.child")
async def kid(c: Context, n: int) -> int:
    return await c.save(lambda: n + 1)


@workflow(name="fork.parent")
async def parent(c: Context, broken: bool) -> int:
    got = await c.child(kid, 1)  # 0: the child's start and end are in the copied prefix
    got += await c.save(step(c, 1, broken=broken), retry=ONCE)  # 1
    return got


@workflow(name="fork.parent")
async def parent_fixed(c: Context, broken: bool) -> int:
    return await parent.fn(c, False)


async def test_a_retry_replays_a_child_the_original_started() -> None:
    async with make_conductor(MemoryBackend(), parent, kid, virtual_clock=True) as conductor:
        original = await conductor.start(parent, True, run_id="dad")
        with pytest.raises(RunFailed):
            await original.result(timeout=WAIT)
        conductor.register(parent_fixed, replace=True)
        fork = await original.retry()
        assert await fork.result(timeout=WAIT) == 2 + 10
        starts = [e for e in await fork.history() if e.kind == "child_started"]
        assert [e.details["run_id"] for e in starts] == ["dad-c0"]  # the original's child


async def test_a_fork_that_died_before_its_log_is_not_listed_and_can_be_made_again() -> None:
    async with make_conductor(MemoryBackend(), five_steps, virtual_clock=True) as conductor:
        original = await conductor.start(five_steps, 1, run_id="k")
        with pytest.raises(RunFailed):
            await original.result(timeout=WAIT)
        # a fork whose maker was killed after the record and before segment 0
        record = pb.ForkRecord(run_id="k-half", step=3, at_ms=1)
        await conductor.backend.create(fork_key("k", "k-half"), record.SerializeToString())
        assert (await describe_run(conductor.backend, "k")).forks == []
        assert [e for e in await original.history() if e.kind == "forked"] == []
        conductor.register(five_steps_fixed, replace=True)
        again = await original.fork(at_step=3, run_id="k-half")  # the maker, run again
        assert await again.result(timeout=WAIT) == 101
        assert [f.run_id for f in (await describe_run(conductor.backend, "k")).forks] == ["k-half"]


def _step(position: int) -> pb.Event:
    return pb.Event(step_completed=pb.StepCompleted(position=position, name="work"))


def test_the_cut_is_refused_inside_a_compacted_history_or_before_a_child_ends() -> None:
    start = pb.Event(started=pb.Started(run_id="c", workflow="w"))
    # segments 0-2 compacted into one snapshot (they all end at index 4), then #7, #8
    compacted = StoredLog([start, _step(0), _step(5), _step(6), _step(7), _step(8)], 4,
                          [4, 4, 4, 5, 6], snapshot_seq=2)  # fmt: skip
    with pytest.raises(ForkError, match=r"before #5 was compacted.*\(#7 or later\)"):
        cut_at_step("c", compacted, 5)
    assert cut_at_step("c", compacted, 7) == 4
    child = pb.Event(child_started=pb.ChildStarted(position=1, run_id="c-c1", workflow="k"))
    ended = pb.Event(child_ended=pb.ChildEnded(id="e", run_id="c-c1"))
    running = StoredLog([start, _step(0), child, _step(2), ended, _step(3)], 5, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ForkError, match=r"child run 'c-c1', started at #1, had not ended"):
        cut_at_step("c", running, 2)
    assert cut_at_step("c", running, 3) == 5  # its end is in the copy
    assert cut_at_step("c", running, 1) == 2  # the fork starts a child of its own
