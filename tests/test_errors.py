"""Every error a user can meet, where they meet it, on every backend."""

from __future__ import annotations

import pickle
from typing import Any

import anyio
import pytest

from substantial import (
    CodecError,
    Conductor,
    Context,
    CorruptLog,
    InvalidArguments,
    NonDeterminismError,
    RunCancelled,
    RunError,
    RunFailed,
    RunNotFound,
    RunStatus,
    StepFailed,
    SubstantialError,
    UnknownWorkflow,
    workflow,
)
from substantial._core.clock import VirtualClock, now_ms
from substantial._store.keys import segment_key
from substantial.backends import Backend
from tests.harness import WAIT, make_conductor, wait_for_status
from tests.test_workflows import Counter


class OrderError(Exception):
    pass


@workflow(name="errors.steps")
async def two_steps(c: Context, x: int) -> int:
    a = await c.save(lambda: x + 1)
    await c.receive("go")
    return a * 10


# ---- starting ----


async def test_start_of_an_unknown_workflow(conductor: Conductor) -> None:
    with pytest.raises(UnknownWorkflow) as info:
        await conductor.start(two_steps, 1)  # a Workflow object never registered here
    assert info.value.name == "errors.steps"
    assert "errors.steps" in str(info.value)
    assert isinstance(info.value, LookupError)
    # By name, a run starts from a process without the code (for agents elsewhere); an
    # agent that does not know the workflow never claims it: it stays pending.
    handle = await conductor.start("no.such.workflow", 1)
    async with anyio.create_task_group() as work:
        claimed, _ = await conductor._claim_due(work)
    assert claimed == 0
    assert await conductor.store.lease_holder(handle.run_id) is None
    assert await handle.status() is RunStatus.PENDING


async def test_start_with_wrong_arguments_raises_invalid_arguments(conductor: Conductor) -> None:
    conductor.register(two_steps)
    with pytest.raises(InvalidArguments) as info:
        await conductor.start(two_steps)
    assert info.value.workflow == "errors.steps"
    with pytest.raises(InvalidArguments):
        await conductor.start(two_steps, 1, 2)
    with pytest.raises(TypeError):  # InvalidArguments is also a TypeError
        await conductor.start(two_steps, 1, nope=3)


async def test_start_with_unencodable_argument_raises_codec_error(conductor: Conductor) -> None:
    conductor.register(two_steps)
    with pytest.raises(CodecError):
        await conductor.start(two_steps, object(), run_id="never-started")
    with pytest.raises(RunNotFound):
        await conductor.handle("never-started").status()


# ---- failures inside a run ----


async def test_exception_in_workflow_fails_the_run_once(conductor: Conductor) -> None:
    counter = Counter()

    @workflow(name="errors.raises")
    async def raises(c: Context) -> None:
        await c.save(lambda: counter.hit("step"))
        raise OrderError("order 17 is broken")

    conductor.register(raises)
    w = await conductor.start(raises)
    with pytest.raises(RunFailed) as info:
        await w.result(timeout=WAIT)
    failure = info.value
    assert failure.run_id == w.run_id
    assert failure.type_name == "tests.test_errors.OrderError"
    assert failure.error_message == "order 17 is broken"
    assert "order 17 is broken" in failure.traceback
    assert 'raise OrderError("order 17 is broken")' in failure.traceback
    assert await w.status() is RunStatus.FAILED
    kinds = [e.kind for e in await w.history()]
    assert kinds == ["started", "step_completed", "failed"]
    assert counter["step"] == 1
    # Asking again gives the same answer: the failure is recorded, not retried.
    with pytest.raises(RunFailed):
        await w.result(timeout=WAIT)


async def test_uncaught_step_failure_fails_the_run(conductor: Conductor) -> None:
    def boom() -> None:
        raise ZeroDivisionError("no")

    @workflow(name="errors.step.uncaught")
    async def uncaught(c: Context) -> None:
        await c.save(boom)

    conductor.register(uncaught)
    w = await conductor.start(uncaught)
    with pytest.raises(RunFailed) as info:
        await w.result(timeout=WAIT)
    assert info.value.type_name == "substantial.errors.StepFailed"
    assert "ZeroDivisionError" in info.value.error_message


async def test_codec_error_at_save_names_the_type(conductor: Conductor) -> None:
    @workflow(name="errors.codec.save")
    async def saves_object(c: Context) -> list[Any]:
        try:
            await c.save(object)
        except CodecError as exc:
            return ["caught", str(exc)]
        return ["not raised"]

    @workflow(name="errors.codec.save.uncaught")
    async def saves_object_uncaught(c: Context) -> None:
        await c.save(object)

    conductor.register(saves_object, saves_object_uncaught)
    w = await conductor.start(saves_object)
    caught, message = await w.result(timeout=WAIT)
    assert caught == "caught"
    assert "object" in message

    w2 = await conductor.start(saves_object_uncaught)
    with pytest.raises(RunFailed) as info:
        await w2.result(timeout=WAIT)
    assert info.value.type_name == "substantial.errors.CodecError"
    assert "object" in info.value.error_message


async def test_codec_error_at_send_names_the_type(conductor: Conductor) -> None:
    conductor.register(two_steps)
    w = await conductor.start(two_steps, 1)
    with pytest.raises(CodecError) as info:
        await w.send("go", object())
    assert "object" in str(info.value)
    assert isinstance(info.value, ValueError)
    await w.send("go")
    assert await w.result(timeout=WAIT) == 20


async def test_unencodable_result_fails_the_run_with_codec_error(conductor: Conductor) -> None:
    @workflow(name="errors.codec.result")
    async def returns_object(c: Context) -> object:
        return object()

    conductor.register(returns_object)
    w = await conductor.start(returns_object)
    with pytest.raises(RunFailed) as info:
        await w.result(timeout=WAIT)
    assert info.value.type_name == "substantial.errors.CodecError"


async def test_cancelled_run_raises_run_cancelled(conductor: Conductor) -> None:
    conductor.register(two_steps)
    w = await conductor.start(two_steps, 1)
    await w.cancel()
    with pytest.raises(RunCancelled):
        await w.result(timeout=WAIT)


# ---- code that no longer replays ----


def step_a() -> str:
    return "a"


def step_b() -> str:
    return "b"


@workflow(name="errors.versioned")
async def versioned_v1(c: Context) -> str:
    first = await c.save(step_a)
    await c.sleep(60)
    return first + "!"


async def test_a_run_of_an_unknown_workflow_waits_until_the_code_is_deployed(
    backend: Backend,
) -> None:
    # A minute's sleep on the wall clock: the first agent, stopping, cannot finish the run
    # (a 50 ms one did, on a loaded machine, and the run was never parked).
    async with make_conductor(backend) as first:
        first.register(versioned_v1)
        w = await first.start(versioned_v1)
        await wait_for_status(w, RunStatus.SLEEPING)

    # An agent without the workflow never claims the run, even once its timer is due
    # (its schedule entries name the workflow): no lease, no park, no log line.
    lacking = make_conductor(backend, clock=VirtualClock(now_ms() + 60_000))
    async with anyio.create_task_group() as work:
        claimed, _ = await lacking._claim_due(work)
    assert claimed == 0
    assert await lacking.store.lease_holder(w.run_id) is None
    assert await lacking.handle(w.run_id).status() is RunStatus.SLEEPING

    async with make_conductor(backend, virtual_clock=True) as having:
        having.register(versioned_v1)
        assert await having.handle(w.run_id).result(timeout=WAIT) == "a!"


async def test_non_determinism_parks_the_run_then_fixed_code_completes_it(
    backend: Backend,
) -> None:
    async with make_conductor(backend) as first:
        first.register(versioned_v1)
        w = await first.start(versioned_v1)
        await wait_for_status(w, RunStatus.SLEEPING)

    @workflow(name="errors.versioned")
    async def versioned_v2(c: Context) -> str:
        first = await c.save(step_b)  # a different step where the log holds step_a
        await c.sleep(60)
        return first

    @workflow(name="errors.versioned")
    async def versioned_v3(c: Context) -> str:
        first = await c.save(step_a)
        await c.sleep(60)
        return first + "?"

    async with make_conductor(backend, virtual_clock=True) as second:
        second.register(versioned_v2)
        remote = second.handle(w.run_id)
        assert await wait_for_status(remote, RunStatus.PARKED) is RunStatus.PARKED
        meta = await second.store.read_meta(w.run_id)
        assert meta is not None
        reason = meta.parked_reason
        assert "position 0" in reason
        assert "step_a" in reason  # what the log holds
        assert "save(step_b)" in reason  # what the code asked for
        with pytest.raises(TimeoutError):
            await remote.result(timeout=0.3)  # parked is not failed

        second.register(versioned_v3, replace=True)  # a deploy: code that replays it
        assert await remote.result(timeout=WAIT) == "a?"
        assert await remote.status() is RunStatus.COMPLETED


@pytest.mark.real_clock  # on the virtual clock a parked run is retried back to back
async def test_non_determinism_on_a_different_primitive_names_both(conductor: Conductor) -> None:
    @workflow(name="errors.kinds")
    async def sleeps(c: Context) -> str:
        await c.save(step_a)
        await c.sleep(0.05)
        await c.receive("go")
        return "done"

    @workflow(name="errors.kinds")
    async def receives(c: Context) -> str:
        await c.save(step_a)
        await c.receive("go")  # the log holds a timer start at position 1
        return "done"

    conductor.register(sleeps)
    w = await conductor.start(sleeps)
    await wait_for_status(w, RunStatus.WAITING)
    conductor.register(receives, replace=True)
    await w.send("go")
    await wait_for_status(w, RunStatus.PARKED)
    meta = await conductor.store.read_meta(w.run_id)
    assert meta is not None
    assert "position 1" in meta.parked_reason
    assert "timer" in meta.parked_reason
    assert "receive('go')" in meta.parked_reason
    conductor.register(sleeps, replace=True)
    assert await w.result(timeout=WAIT) == "done"


# ---- corrupt logs ----


async def test_garbage_segment_parks_only_that_run(conductor: Conductor, backend: Backend) -> None:
    # A corrupt segment is the log itself, unreadable: the run is parked with the reason
    # (not failed: a failure is final, and only a log can say a run failed), so once the
    # segment is restored the run goes on.
    conductor.register(two_steps)
    victim = await conductor.start(two_steps, 1)
    healthy = await conductor.start(two_steps, 2)
    await wait_for_status(victim, RunStatus.WAITING)
    await wait_for_status(healthy, RunStatus.WAITING)

    key = segment_key(victim.run_id, 1)
    original = await backend.get(key)
    assert original is not None
    await backend.put(key, b"\xff\x00 this is not a segment \xfe" * 3)
    await victim.send("go")
    await wait_for_status(victim, RunStatus.PARKED)
    meta = await conductor.store.read_meta(victim.run_id)
    assert meta is not None
    assert key in meta.parked_reason
    with pytest.raises(CorruptLog) as corrupt:
        await victim.history()
    assert corrupt.value.key == key
    with pytest.raises(TimeoutError):  # never RunFailed: the log does not end in a failure
        await victim.result(timeout=0.5)

    await healthy.send("go")
    assert await healthy.result(timeout=WAIT) == 30

    await backend.put(key, original[0])  # restored: the parked run is retried and goes on
    assert await victim.result(timeout=WAIT) == 20


async def test_foreign_segment_parks_only_that_run(conductor: Conductor, backend: Backend) -> None:
    conductor.register(two_steps)
    victim = await conductor.start(two_steps, 1)
    other = await conductor.start(two_steps, 2)
    await wait_for_status(victim, RunStatus.WAITING)
    await wait_for_status(other, RunStatus.WAITING)

    foreign = await backend.get(segment_key(other.run_id, 1))
    assert foreign is not None
    key = segment_key(victim.run_id, 2)  # the next segment of the victim's log
    await backend.put(key, foreign[0])
    await victim.send("go")
    await wait_for_status(victim, RunStatus.PARKED)
    meta = await conductor.store.read_meta(victim.run_id)
    assert meta is not None
    assert key in meta.parked_reason
    assert other.run_id in meta.parked_reason  # whose segment it is

    await other.send("go")
    assert await other.result(timeout=WAIT) == 30


# ---- the error types themselves ----


def test_error_hierarchy() -> None:
    for error in (UnknownWorkflow, NonDeterminismError, CorruptLog, RunNotFound, RunFailed):
        assert issubclass(error, RunError)
    for error in (RunError, CodecError, InvalidArguments, StepFailed, RunCancelled):
        assert issubclass(error, SubstantialError)
    assert issubclass(RunNotFound, LookupError)
    assert issubclass(UnknownWorkflow, LookupError)
    assert issubclass(CodecError, ValueError)
    assert issubclass(InvalidArguments, TypeError)


def test_non_determinism_message_names_position_log_and_code() -> None:
    error = NonDeterminismError("r1", 3, "a step result of step 'a'", "save(b)")
    assert str(error) == (
        "run 'r1' does not replay at position 3: the log holds a step result of step 'a', "
        "but the code asked for save(b)"
    )
    assert (error.position, error.logged, error.code) == (3, "a step result of step 'a'", "save(b)")


@pytest.mark.parametrize(
    "error",
    [
        RunFailed("r1", "ValueError", "bad", "Traceback..."),
        RunCancelled("r1"),
        RunNotFound("r1"),
        UnknownWorkflow("wf", ["a", "b"], "r1"),
        NonDeterminismError("r1", 2, "x", "y"),
        CorruptLog("r1", "runs/r1/log/000000000001", "not a segment"),
        StepFailed("KeyError", "k", "tb"),
        InvalidArguments("wf", "missing x"),
    ],
)
def test_errors_pickle_with_their_fields(error: SubstantialError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
