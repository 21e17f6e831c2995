"""Workflows end to end, through the public API, on every backend."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from substantial import (
    Conductor,
    Context,
    RetryPolicy,
    RunCancelled,
    RunNotFound,
    RunStatus,
    StepFailed,
    workflow,
)
from substantial.backends import Backend
from tests.harness import WAIT, make_conductor, wait_for_status


class Counter:
    """How many times each step ran (steps run in worker threads)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def hit(self, name: str) -> int:
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts[name]

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


# ---- the README example ----


@workflow()
async def example(c: Context, x: int) -> int:
    r = await c.save(lambda: x * 2)
    await c.sleep(timedelta(seconds=0.05))
    n = await c.receive("by")
    return r * n


async def test_readme_example(backend: Backend) -> None:
    conductor = Conductor(backend)
    conductor.register(example)
    agent = conductor.run()
    w = await conductor.start(example, 21)
    await w.send("by", 2)
    assert await w.result(timeout=WAIT) == 84
    agent.cancel()
    await agent
    assert agent.done()
    assert not agent.cancelled()


async def test_async_with_runs_the_agent_for_the_block(backend: Backend) -> None:
    async with make_conductor(backend) as conductor:
        conductor.register(example)
        w = await conductor.start(example, 5)
        await w.send("by", 3)
        assert await w.result(timeout=WAIT) == 30
    assert await conductor.handle(w.run_id).status() is RunStatus.COMPLETED


# ---- steps ----


async def test_ten_step_workflow_runs_each_step_once(conductor: Conductor) -> None:
    counter = Counter()

    @workflow(name="ten.steps")
    async def ten(c: Context) -> list[int]:
        results = []
        for i in range(10):
            results.append(await c.save(lambda i=i: counter.hit(f"s{i}") * 100 + i))
        return results

    conductor.register(ten)
    w = await conductor.start(ten)
    assert await w.result(timeout=WAIT) == [100 + i for i in range(10)]
    assert counter.counts == {f"s{i}": 1 for i in range(10)}
    history = await w.history()
    steps = [e for e in history if e.kind == "step_completed"]
    assert [e.details["result"] for e in steps] == [100 + i for i in range(10)]


async def test_save_takes_sync_and_async_callables(conductor: Conductor) -> None:
    async def async_step() -> str:
        await anyio.lowlevel.checkpoint()
        return "async"

    @workflow(name="sync.async")
    async def both(c: Context) -> list[str]:
        return [await c.save(lambda: "sync"), await c.save(async_step)]

    conductor.register(both)
    w = await conductor.start(both)
    assert await w.result(timeout=WAIT) == ["sync", "async"]


async def test_gather_of_saves_runs_each_once_and_replays(conductor: Conductor) -> None:
    counter = Counter()

    def step(name: str, value: int) -> Callable[[], int]:
        def run() -> int:
            counter.hit(name)
            return value

        run.__qualname__ = f"step_{name}"
        return run

    @workflow(name="gather")
    async def gathered(c: Context) -> list[int]:
        values = await asyncio.gather(
            c.save(step("a", 1)), c.save(step("b", 2)), c.save(step("c", 3))
        )
        await c.sleep(0.05)  # forces a replay of the gathered steps
        more = await asyncio.gather(c.save(step("d", 4)), c.save(step("e", 5)))
        return [*values, *more]

    conductor.register(gathered)
    w = await conductor.start(gathered)
    assert await w.result(timeout=WAIT) == [1, 2, 3, 4, 5]
    assert counter.counts == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}


# ---- sleep ----


async def test_sleep_is_durable_across_conductors(backend: Backend) -> None:
    """A workflow resumed by a second conductor after the first one is stopped mid-run."""
    finisher = {"name": "first"}
    counter = Counter()

    @workflow(name="durable.sleep")
    async def sleeper(c: Context) -> list[str]:
        before = await c.save(lambda: (counter.hit("before"), finisher["name"])[1])
        await c.sleep(timedelta(seconds=0.3))
        after = await c.save(lambda: (counter.hit("after"), finisher["name"])[1])
        return [before, after]

    async with make_conductor(backend) as first:
        first.register(sleeper)
        w = await first.start(sleeper)
        await wait_for_status(w, RunStatus.SLEEPING)
    finisher["name"] = "second"

    async with make_conductor(backend) as second:
        second.register(sleeper)
        assert await second.handle(w.run_id).result(timeout=WAIT) == ["first", "second"]
    assert counter.counts == {"before": 1, "after": 1}


async def test_sleep_accepts_seconds_and_timedelta(conductor: Conductor) -> None:
    @workflow(name="sleep.kinds")
    async def sleeps(c: Context) -> bool:
        start = c.now()
        await c.sleep(0.05)
        await c.sleep(timedelta(milliseconds=50))
        return c.now() - start >= timedelta(milliseconds=100)

    conductor.register(sleeps)
    w = await conductor.start(sleeps)
    assert await w.result(timeout=WAIT) is True


# ---- events ----


async def test_receive_takes_events_in_arrival_order_including_earlier_ones(
    conductor: Conductor,
) -> None:
    @workflow(name="receive.order")
    async def receiver(c: Context) -> dict[str, Any]:
        await c.receive("go")
        a = [await c.receive("a") for _ in range(3)]
        b = await c.receive("b")
        late = await c.receive("late")
        return {"a": a, "b": b, "late": late}

    conductor.register(receiver)
    w = await conductor.start(receiver)
    for name, value in [("a", 1), ("a", 2), ("b", "B"), ("a", 4), ("go", None)]:
        await w.send(name, value)
    await wait_for_status(w, RunStatus.WAITING)
    await w.send("late", {"x": [1, 2]})
    assert await w.result(timeout=WAIT) == {"a": [1, 2, 4], "b": "B", "late": {"x": [1, 2]}}


async def test_handle_sees_earlier_events_and_fires_before_next_primitive(
    conductor: Conductor,
) -> None:
    @workflow(name="handle.events")
    async def handled(c: Context) -> list[list[int]]:
        seen: list[int] = []
        await c.receive("go")
        c.handle("x", seen.append)
        snapshots = [list(seen)]
        await c.receive("go")
        snapshots.append(list(seen))
        await c.sleep(0.05)
        snapshots.append(list(seen))
        return snapshots

    conductor.register(handled)
    w = await conductor.start(handled)
    for name, value in [("x", 1), ("x", 2), ("go", None), ("x", 3), ("go", None)]:
        await w.send(name, value)
    assert await w.result(timeout=WAIT) == [[1, 2], [1, 2, 3], [1, 2, 3]]


async def test_ensure_waits_until_predicate_holds(conductor: Conductor) -> None:
    @workflow(name="ensure.total")
    async def ensured(c: Context) -> list[Any]:
        total = 0

        def add(value: int) -> None:
            nonlocal total
            total += value

        c.handle("add", add)
        at_once = await c.ensure(lambda: True)
        reached = await c.ensure(lambda: total >= 10)
        return [at_once, reached, total]

    conductor.register(ensured)
    w = await conductor.start(ensured)
    await w.send("add", 3)
    await w.send("add", 4)
    await wait_for_status(w, RunStatus.WAITING)
    await w.send("add", 5)
    assert await w.result(timeout=WAIT) == [True, True, 12]


# ---- deterministic helpers and the log ----


async def test_now_random_uuid4_replay_identically(conductor: Conductor) -> None:
    @workflow(name="deterministic.helpers")
    async def helpers(c: Context) -> dict[str, Any]:
        first = [c.now().isoformat(), c.random(), str(c.uuid4())]
        recorded = await c.save(lambda: first)  # the values of the first wake-up
        await c.sleep(0.05)
        second = [c.now().isoformat(), c.random(), str(c.uuid4())]
        recorded_second = await c.save(lambda: second)
        await c.sleep(0.05)
        return {
            "first": first,
            "recorded": recorded,
            "second": second,
            "recorded_second": recorded_second,
            "aware": c.now().tzinfo is UTC,
        }

    conductor.register(helpers)
    w = await conductor.start(helpers)
    out = await w.result(timeout=WAIT)
    assert out["first"] == out["recorded"]
    assert out["second"] == out["recorded_second"]
    assert out["aware"] is True
    first_now = datetime.fromisoformat(out["first"][0])
    second_now = datetime.fromisoformat(out["second"][0])
    assert second_now - first_now >= timedelta(milliseconds=50)
    assert 0 <= out["first"][1] < 1
    assert out["first"][1] != out["second"][1]
    assert uuid.UUID(out["first"][2]).version == 4
    assert out["first"][2] != out["second"][2]


async def test_context_run_id(conductor: Conductor) -> None:
    @workflow(name="run.id")
    async def whoami(c: Context) -> str:
        return c.run_id

    conductor.register(whoami)
    w = await conductor.start(whoami, run_id="who-1")
    assert w.run_id == "who-1"
    assert await w.result(timeout=WAIT) == "who-1"


async def test_log_is_silent_on_replay(
    conductor: Conductor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="substantial.workflow")

    @workflow(name="logging")
    async def logs(c: Context) -> None:
        c.log.info("one")
        await c.sleep(0.05)
        c.log.info("two")
        await c.sleep(0.05)
        c.log.info("three")

    conductor.register(logs)
    w = await conductor.start(logs)
    await w.result(timeout=WAIT)
    messages = [r.getMessage() for r in caplog.records if r.name == "substantial.workflow"]
    assert messages == [f"[{w.run_id}] {m}" for m in ("one", "two", "three")]


# ---- retries ----


async def test_retry_waits_durably_and_keeps_the_attempt_count(backend: Backend) -> None:
    counter = Counter()

    def flaky() -> str:
        if counter.hit("flaky") < 3:
            raise ConnectionError("not yet")
        return "ok"

    policy = RetryPolicy(max_attempts=5, initial_interval=0.2, backoff_coefficient=1.0)

    @workflow(name="retry.flaky")
    async def retried(c: Context) -> str:
        return await c.save(flaky, retry=policy)

    async with make_conductor(backend) as first:
        first.register(retried)
        w = await first.start(retried)
        await wait_for_status(w, RunStatus.SLEEPING)  # waiting for the second attempt
    assert counter["flaky"] == 1

    async with make_conductor(backend) as second:
        second.register(retried)
        assert await second.handle(w.run_id).result(timeout=WAIT) == "ok"
    assert counter["flaky"] == 3
    history = await w.history()
    assert [e.details["attempt"] for e in history if e.kind == "step_attempt_failed"] == [1, 2]
    (done,) = [e for e in history if e.kind == "step_completed"]
    assert done.details["attempts"] == 3
    assert done.details["result"] == "ok"


async def test_retries_exhausted_raise_step_failed_on_every_replay(conductor: Conductor) -> None:
    counter = Counter()

    def broken() -> None:
        counter.hit("broken")
        raise ValueError(f"bad #{counter['broken']}")

    @workflow(name="retry.exhausted")
    async def exhausted(c: Context) -> list[Any]:
        seen = []
        try:
            await c.save(broken, retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
        except StepFailed as exc:
            seen.append([exc.type_name, exc.error_message])
        await c.sleep(0.05)  # the final wake-up replays the failed step
        return seen

    conductor.register(exhausted)
    w = await conductor.start(exhausted)
    assert await w.result(timeout=WAIT) == [["ValueError", "bad #2"]]
    assert counter["broken"] == 2


async def test_non_retryable_error_ends_the_step_at_once(conductor: Conductor) -> None:
    counter = Counter()

    def missing() -> None:
        counter.hit("missing")
        raise KeyError("nope")

    def named() -> None:
        counter.hit("named")
        raise PermissionError("denied")

    policy_type = RetryPolicy(max_attempts=5, initial_interval=0.01, non_retryable=(KeyError,))
    policy_name = RetryPolicy(
        max_attempts=5, initial_interval=0.01, non_retryable=("PermissionError",)
    )

    @workflow(name="retry.non_retryable")
    async def stops(c: Context) -> list[str]:
        names = []
        for fn, policy in [(missing, policy_type), (named, policy_name)]:
            try:
                await c.save(fn, retry=policy)
            except StepFailed as exc:
                names.append(exc.type_name)
        return names

    conductor.register(stops)
    w = await conductor.start(stops)
    assert await w.result(timeout=WAIT) == ["KeyError", "PermissionError"]
    assert counter.counts == {"missing": 1, "named": 1}


async def test_save_timeout_fails_the_attempt(conductor: Conductor) -> None:
    async def hangs() -> None:
        await anyio.sleep(3600)

    @workflow(name="save.timeout")
    async def timed(c: Context) -> list[str]:
        try:
            await c.save(hangs, timeout=0.05)
        except StepFailed as exc:
            return [exc.type_name]
        return ["no timeout"]

    conductor.register(timed)
    w = await conductor.start(timed)
    assert await w.result(timeout=WAIT) == ["TimeoutError"]


async def test_step_failed_caught_by_the_workflow_carries_the_error(conductor: Conductor) -> None:
    def fails() -> None:
        raise RuntimeError("card declined")

    @workflow(name="step.failed")
    async def caught(c: Context) -> dict[str, str]:
        try:
            await c.save(fails)
        except StepFailed as exc:
            return {"type": exc.type_name, "message": exc.error_message, "tb": exc.traceback}
        return {}

    conductor.register(caught)
    w = await conductor.start(caught)
    out = await w.result(timeout=WAIT)
    assert out["type"] == "RuntimeError"
    assert out["message"] == "card declined"
    assert "card declined" in out["tb"]
    assert "fails" in out["tb"]


# ---- suspension and cancellation ----


async def test_except_exception_does_not_swallow_suspension(conductor: Conductor) -> None:
    @workflow(name="no.swallow")
    async def stubborn(c: Context) -> list[str]:
        path = []
        try:
            await c.sleep(0.05)
            path.append("slept")
        except Exception:
            path.append("sleep swallowed")
        try:
            path.append(await c.receive("go"))
        except Exception:
            path.append("receive swallowed")
        return path

    conductor.register(stubborn)
    w = await conductor.start(stubborn)
    await wait_for_status(w, RunStatus.WAITING)
    await w.send("go", "received")
    assert await w.result(timeout=WAIT) == ["slept", "received"]


async def test_cancel_raises_run_cancelled_and_runs_finally_step(conductor: Conductor) -> None:
    counter = Counter()

    @workflow(name="cancel.finally")
    async def cancellable(c: Context) -> str:
        try:
            await c.receive("never")
            return "not cancelled"
        finally:
            await c.save(lambda: counter.hit("cleanup"))

    conductor.register(cancellable)
    w = await conductor.start(cancellable)
    await wait_for_status(w, RunStatus.WAITING)
    assert counter["cleanup"] == 0
    await w.cancel()
    with pytest.raises(RunCancelled) as info:
        await w.result(timeout=WAIT)
    assert info.value.run_id == w.run_id
    assert counter["cleanup"] == 1
    assert await w.status() is RunStatus.CANCELLED
    kinds = [e.kind for e in await w.history()]
    assert "cancel_requested" in kinds
    assert kinds[-1] == "cancelled"


# ---- starting runs ----


async def test_start_is_idempotent_on_run_id(conductor: Conductor) -> None:
    counter = Counter()

    @workflow(name="idempotent")
    async def once(c: Context, x: int) -> int:
        return await c.save(lambda: (counter.hit("step"), x)[1])

    conductor.register(once)
    w1 = await conductor.start(once, 1, run_id="order-42")
    assert await w1.result(timeout=WAIT) == 1
    w2 = await conductor.start(once, 2, run_id="order-42")
    assert w2.run_id == "order-42"
    assert await w2.result(timeout=WAIT) == 1
    assert counter["step"] == 1
    assert [e.kind for e in await w2.history()].count("started") == 1


@workflow(name="orders.v1")
async def by_name(c: Context, x: int, *, factor: int = 1) -> int:
    return x * factor


async def test_start_by_name_with_keyword_arguments(conductor: Conductor) -> None:
    conductor.register(by_name)
    w = await conductor.start("orders.v1", 7, factor=3)
    assert await w.result(timeout=WAIT) == 21


async def test_handle_from_another_conductor_without_agent(conductor: Conductor) -> None:
    conductor.register(example)
    w = await conductor.start(example, 2)
    client = Conductor(conductor.backend)  # never runs an agent
    remote = client.handle(w.run_id)
    await wait_for_status(remote, RunStatus.WAITING)
    await remote.send("by", 10)
    assert await remote.result(timeout=WAIT) == 40


# ---- status, history, result ----


async def test_status_transitions(backend: Backend) -> None:
    @workflow(name="statuses")
    async def phases(c: Context) -> None:
        await c.receive("go")
        await c.sleep(3600)

    client = make_conductor(backend)
    client.register(phases)
    w = await client.start(phases)
    assert await w.status() is RunStatus.PENDING  # no agent yet
    async with make_conductor(backend) as agent:
        agent.register(phases)
        assert await wait_for_status(w, RunStatus.WAITING) is RunStatus.WAITING
        await w.send("go")
        assert await wait_for_status(w, RunStatus.SLEEPING) is RunStatus.SLEEPING
        await w.cancel()
        assert await wait_for_status(w, RunStatus.CANCELLED) is RunStatus.CANCELLED
    assert RunStatus.CANCELLED.finished
    assert not RunStatus.SLEEPING.finished


async def test_completed_status(conductor: Conductor) -> None:
    conductor.register(by_name)
    w = await conductor.start(by_name, 1)
    await w.result(timeout=WAIT)
    assert await w.status() is RunStatus.COMPLETED


async def test_history_content(conductor: Conductor) -> None:
    conductor.register(example)
    w = await conductor.start(example, 4, run_id="hist-1")
    await wait_for_status(w, RunStatus.WAITING)
    await w.send("by", 5)
    assert await w.result(timeout=WAIT) == 40
    history = await w.history()
    assert [e.kind for e in history] == [
        "started",
        "step_completed",
        "timer_started",
        "timer_fired",
        "event_received",
        "completed",
    ]
    started, step, timer, fired, event, completed = history
    assert started.segment == 0
    assert started.details["workflow"] == example.name
    assert started.details["args"] == [[4], {}]
    assert step.details["result"] == 8
    assert step.details["position"] == 0
    assert timer.details["position"] == 1
    assert fired.details["position"] == 1
    assert event.details["name"] == "by"
    assert event.details["value"] == 5
    assert completed.details["result"] == 40
    assert [e.segment for e in history] == sorted(e.segment for e in history)
    assert all(e.at.tzinfo is not None for e in history)
    assert [e.at for e in history] == sorted(e.at for e in history)


async def test_result_timeout_raises_timeout_error(conductor: Conductor) -> None:
    conductor.register(example)
    w = await conductor.start(example, 1)
    with pytest.raises(TimeoutError):
        await w.result(timeout=0.1)
    assert not (await w.status()).finished


async def test_handle_to_missing_run_raises_run_not_found(conductor: Conductor) -> None:
    missing = conductor.handle("no-such-run")
    with pytest.raises(RunNotFound):
        await missing.status()
    with pytest.raises(RunNotFound):
        await missing.result(timeout=WAIT)
    with pytest.raises(RunNotFound):
        await missing.send("x", 1)
    with pytest.raises(RunNotFound):
        await missing.cancel()
    with pytest.raises(RunNotFound):
        await missing.history()
    with pytest.raises(LookupError):  # RunNotFound is also a LookupError
        await missing.status()
