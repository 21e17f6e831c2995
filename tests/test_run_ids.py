"""
Run ids: one rule, checked wherever an id enters (``start``, ``handle``, a child id
chosen by workflow code, a schedule key, the CLI), and every id it allows works for
every operation on every backend. A child id that names a run which is not the
parent's own child is refused at that ``child`` call, never adopted or cancelled.
"""

from __future__ import annotations

import logging
import pickle
import string
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import (
    ChildRunIdTaken,
    Conductor,
    Context,
    InvalidRunId,
    NonDeterminismError,
    RunCancelled,
    RunError,
    RunStatus,
    SubstantialError,
    workflow,
)
from substantial._core.clock import now_ms
from substantial._core.runids import MAX_RUN_ID_LENGTH, check_run_id, derived_run_id
from substantial._engine.replay import Execution, open_children
from substantial._store.keys import ScheduleEntry
from substantial._store.runs import RunStore
from substantial.backends import Backend, from_url
from substantial.codec import decode_payload, encode_payload
from substantial.protocol import substantial_pb2 as pb
from substantial.testing import Replayer
from tests import harness, runids_app
from tests.agents import Agent, backend_url
from tests.conftest import BACKENDS
from tests.harness import WAIT, wait_until

LONGEST = "L" + "o" * (MAX_RUN_ID_LENGTH - 1)
EVERY_CHARACTER = string.ascii_letters + string.digits + "._:@+=,-"
NO_ARGS = encode_payload([[], {}])
INVALID = ["", ".", "..", "order-42/", "../../escape-child", "x" * 300, "-a", "a b", "é", "a\n"]


@workflow(name="runids.kid")
async def kid(c: Context, x: int) -> int:
    return x * 2


@workflow(name="runids.waiter")
async def waiter(c: Context) -> str:
    return str(await c.receive("go"))


@workflow(name="runids.family")
async def family(c: Context, child_id: str) -> None:
    """An event, a child with a derived id, one with a chosen id, then a continuation."""
    got = await c.receive("go")
    derived = await c.child(kid, 1)
    named = await (await c.start_child(kid, 2, run_id=child_id)).result()
    await c.continue_using(last, [got, derived, named])


@workflow(name="runids.last")
async def last(c: Context, values: list[Any]) -> list[Any]:
    return [*values, c.run_id]


@workflow(name="runids.bad_child")
async def bad_child(c: Context, child_id: str) -> list[Any]:
    """Catches the error at the call; the sleep makes a second wake-up replay it."""
    try:
        await c.child(kid, 1, run_id=child_id)
    except InvalidRunId as exc:
        caught = [type(exc).__name__, str(exc)]
    await c.sleep(0.01)
    return [*caught, await c.child(kid, 3)]


@workflow(name="runids.adopter")
async def adopter(c: Context, child_id: str) -> dict[str, str]:
    try:
        handle = await c.start_child(waiter, run_id=child_id, detached=True)
    except ChildRunIdTaken as exc:
        outcome = {"taken": exc.run_id, "owner": exc.owner, "message": str(exc)}
    else:
        outcome = {"started": handle.run_id}
    await c.sleep(0.01)  # a second wake-up replays the call: the same answer
    return outcome


@workflow(name="runids.attached")
async def attached(c: Context, child_id: str) -> int:
    return await c.child(kid, 7, run_id=child_id)


WORKFLOWS = (kid, waiter, family, last, bad_child, adopter, attached)
pytestmark = pytest.mark.conductor(*WORKFLOWS)


def make_conductor(backend: Backend) -> Conductor:
    return harness.make_conductor(backend, *WORKFLOWS)


# ---- the rule ----


@pytest.mark.parametrize("run_id", INVALID)
def test_an_invalid_id_raises_the_named_error_with_the_rule(run_id: str) -> None:
    with pytest.raises(InvalidRunId) as info:
        check_run_id(run_id)
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, SubstantialError)
    assert error.run_id == run_id
    shown = repr(run_id) if len(run_id) <= 60 else f"({len(run_id)} characters)"
    assert str(error).startswith("invalid run id ")
    assert shown in str(error)
    assert f"1-{MAX_RUN_ID_LENGTH} letters, digits or ._:@+=,-" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy)) == (InvalidRunId, str(error))


def test_an_invalid_id_says_where_it_came_from() -> None:
    with pytest.raises(InvalidRunId, match=r"'a/' \(child of run 'p'\)"):
        check_run_id("a/", "child of run 'p'")
    with pytest.raises(InvalidRunId, match=r"300 characters"):
        check_run_id("x" * 300)
    with pytest.raises(InvalidRunId):
        check_run_id(42)  # type: ignore[arg-type]


def test_child_run_id_taken_is_a_run_error_that_pickles() -> None:
    error = ChildRunIdTaken("kid", "p2", "p1")
    assert isinstance(error, RunError)
    assert (error.run_id, error.parent_run_id, error.owner) == ("kid", "p2", "p1")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.__dict__) == (ChildRunIdTaken, str(error), error.__dict__)


@pytest.mark.parametrize("run_id", [LONGEST, EVERY_CHARACTER, "a", "0"])
def test_valid_ids_pass(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("base", ["p", LONGEST, "x" * 190, EVERY_CHARACTER])
def test_derived_ids_always_obey_the_rule_and_differ(base: str) -> None:
    ids = {derived_run_id(base, f"-c{i}") for i in range(1000)}
    ids |= {derived_run_id(base, f".{i}") for i in range(1000)}
    assert len(ids) == 2000
    for run_id in ids:
        assert check_run_id(run_id) == run_id
    assert derived_run_id("p", "-c3") == "p-c3"  # short ones as before
    assert derived_run_id(base, "-c1") != derived_run_id(base[:-1] + "?", "-c1")


def test_a_schedule_key_with_an_invalid_run_id_parses_as_nothing() -> None:
    due = f"{now_ms():015d}"
    for bad in ["..", ".", "order-42/", "-x", "a b", ""]:
        assert ScheduleEntry.parse(f"schedule/{due}-{bad}~t") is None, bad
    entry = ScheduleEntry.parse(f"schedule/{due}-{EVERY_CHARACTER}~s")
    assert entry is not None
    assert entry.run_id == EVERY_CHARACTER


@pytest.mark.parametrize("run_id", ["x" * (MAX_RUN_ID_LENGTH + 1), "order-42/", ".."])
def test_the_cli_refuses_an_invalid_id_and_writes_nothing(run_id: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from substantial.cli import main

    store = tmp_path / "store"
    done = CliRunner().invoke(main, ["send", run_id, "go", "--backend", f"file://{store}"])
    assert done.exit_code == 2, done.output
    assert "invalid run id" in done.output
    assert not store.exists() or not any(store.rglob("*"))


# ---- every valid id works everywhere ----


@pytest.mark.parametrize("run_id", [LONGEST, EVERY_CHARACTER], ids=["longest", "every-character"])
async def test_a_valid_id_works_for_every_operation(conductor: Conductor, run_id: str) -> None:
    child_id = run_id[:-1] + "k"
    handle = await conductor.start(family, child_id, run_id=run_id)
    await handle.send("go", "went")
    got, derived, named, continued = await handle.result(timeout=WAIT)
    assert (got, derived, named) == ("went", 2, 4)
    assert check_run_id(continued) == continued  # the continuation's id obeys the rule too
    assert await conductor.handle(continued).status() is RunStatus.COMPLETED
    assert await conductor.handle(child_id).result(timeout=WAIT) == 4
    history = await handle.history()
    children = [event.details["run_id"] for event in history if event.kind == "child_started"]
    assert len(children) == 2
    for child in children:
        assert check_run_id(child) == child
        assert await conductor.handle(child).status() is RunStatus.COMPLETED
    cancelled = await conductor.start(waiter, run_id=run_id[:-1] + "w")
    await cancelled.cancel()
    with pytest.raises(RunCancelled):
        await cancelled.result(timeout=WAIT)


# ---- child ids chosen by workflow code ----


@pytest.mark.parametrize("child_id", INVALID)
async def test_an_invalid_child_id_raises_at_the_call_and_writes_nothing(
    conductor: Conductor, backend: Backend, child_id: str
) -> None:
    handle = await conductor.start(bad_child, child_id, run_id="parent")
    name, message, after = await handle.result(timeout=WAIT)
    assert name == "InvalidRunId"
    assert "(child of run 'parent')" in message
    assert after == 6
    runs = {key.split("/")[1] for key in await backend.list_all("runs/")}
    assert runs == {"parent", "parent-c1"}  # the invalid child took no position (c2)
    for key in await backend.list_all("schedule/"):
        entry = ScheduleEntry.parse(key)
        assert entry is not None, key
        assert entry.run_id in runs, key


async def test_a_child_id_held_by_another_run_is_refused_not_adopted(
    conductor: Conductor,
) -> None:
    top = await conductor.start(waiter, run_id="top")
    first = await conductor.start(adopter, "kid", run_id="a1")
    assert await first.result(timeout=WAIT) == {"started": "kid"}
    second = await conductor.start(adopter, "kid", run_id="a2")
    assert await second.result(timeout=WAIT) == {
        "taken": "kid",
        "owner": "a1",
        "message": "run 'a2' cannot start child 'kid': that id belongs to a child of run 'a1'",
    }
    third = await conductor.start(adopter, "top", run_id="a3")
    outcome = await third.result(timeout=WAIT)
    assert (outcome["taken"], outcome["owner"]) == ("top", "")
    assert outcome["message"].endswith("that id belongs to a top-level run")
    # the refusal is recorded once, and the runs it named live on untouched
    kinds = [event.kind for event in await third.history()]
    assert kinds.count("child_started") == 1
    for run_id in ("top", "kid"):
        other = conductor.handle(run_id)
        assert await other.status() is RunStatus.WAITING
        assert "cancel_requested" not in [event.kind for event in await other.history()]
        await other.send("go", run_id)
        assert await other.result(timeout=WAIT) == run_id
    assert await top.result() == "top"


async def test_a_child_its_parent_already_created_is_its_own(backend: Backend) -> None:
    """An agent died after creating the child and before recording it: the next adopts it."""
    conductor = make_conductor(backend)
    started = pb.Started(
        run_id="own-kid",
        workflow=kid.name,
        args=encode_payload([[5], {}]),
        parent_run_id="own",
    )
    assert await conductor._create_run(started)
    parent = await conductor.start(attached, "own-kid", run_id="own")
    async with conductor:
        assert await parent.result(timeout=WAIT) == 10  # the child it had created: 5 * 2
    kinds = [event.kind for event in await parent.history()]
    assert kinds.count("child_started") == 1
    assert kinds.count("child_ended") == 1


@workflow(name="runids.derived")
async def derived(c: Context) -> int:
    return await c.child(kid, 4)


def test_a_log_with_a_long_derived_child_id_from_before_the_limit_still_replays() -> None:
    parent = "p" * (MAX_RUN_ID_LENGTH - 1)
    legacy = f"{parent}-c0"  # what older versions derived: 202 characters
    assert derived_run_id(parent, "-c0") != legacy
    result = encode_payload(8)
    events = [
        pb.Event(started=pb.Started(run_id=parent, workflow=derived.name, args=NO_ARGS)),
        pb.Event(child_started=pb.ChildStarted(position=0, run_id=legacy, workflow=kid.name)),
        pb.Event(child_ended=pb.ChildEnded(id="e", run_id=legacy, result=result)),
        pb.Event(completed=pb.Completed(result=result)),
    ]
    outcome = Replayer(derived).replay(events)
    assert outcome is not None
    assert outcome.WhichOneof("kind") == "completed"
    chosen = pb.ChildStarted(position=0, run_id="someone-else", workflow=kid.name)
    with pytest.raises(NonDeterminismError, match="someone-else"):
        Replayer(derived).replay([events[0], pb.Event(child_started=chosen)])


def test_a_recorded_refusal_replays_as_the_same_error() -> None:
    events = [
        pb.Event(
            started=pb.Started(
                run_id="a9", workflow=adopter.name, args=encode_payload([["top"], {}])
            )
        ),
        pb.Event(
            child_started=pb.ChildStarted(
                position=0, run_id="top", workflow=waiter.name, detached=True, id_taken=True
            )
        ),
        pb.Event(timer_started=pb.TimerStarted(position=1, fire_at_ms=10)),
        pb.Event(timer_fired=pb.TimerFired(position=1)),
    ]
    execution = Execution("a9", adopter)
    try:
        execution.replay(events)
        execution.go_live(20)  # the code runs on past the log: it meets the same refusal
        outcome = execution.outcome
    finally:
        execution.close()
    assert outcome is not None
    assert decode_payload(outcome.completed.result) == {
        "taken": "top",
        "owner": "",
        "message": "run 'a9' cannot start child 'top': that id belongs to a top-level run",
    }
    assert open_children(events) == []  # a refused id is no child: nothing to cancel


# ---- schedule keys ----


async def test_a_schedule_key_that_names_no_run_is_deleted_with_a_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    due = f"{now_ms():015d}"
    planted = [f"schedule/{due}-{bad}" for bad in ["..~t", ".~s", "order-42/~s", "-x~t"]]
    for key in planted:
        await backend.put(key, pb.ScheduleEntry(nonce="planted").SerializeToString())
    caplog.set_level(logging.WARNING, logger="substantial")
    async with make_conductor(backend) as conductor:
        handle = await conductor.start(kid, 4, run_id="fine")
        assert await handle.result(timeout=WAIT) == 8

        async def gone() -> bool:
            return not set(planted) & set(await backend.list_all("schedule/"))

        await wait_until(gone, WAIT, "the planted keys to be deleted")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in planted:
        assert sum(key in message for message in warned) == 1, (key, warned)
    entries, _, _ = await RunStore(backend).due(now_ms())
    assert entries == []


async def test_a_log_naming_invalid_ids_ends_without_touching_them(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """
    A log is input too: one whose end names an invalid continuation, parent and child
    (written by a buggy or hostile writer) still ends, and nothing is written for them.
    """
    conductor = make_conductor(backend)
    start = pb.Started(run_id="hostile", workflow=waiter.name, args=NO_ARGS, parent_run_id="../p")
    assert await conductor._create_run(start)
    end = [
        pb.Event(child_started=pb.ChildStarted(position=0, run_id="../kid", workflow=kid.name)),
        pb.Event(continued_as=pb.ContinuedAs(run_id="../../escape", workflow=kid.name)),
    ]
    assert await RunStore(backend).append("hostile", 1, end)
    caplog.set_level(logging.ERROR, logger="substantial")
    handle = conductor.handle("hostile")
    async with conductor:

        async def ended() -> bool:
            return await handle.status() is RunStatus.CONTINUED

        await wait_until(ended, WAIT, "the run to end")
    runs = {key.split("/")[1] for key in await backend.list_all("runs/")}
    assert runs == {"hostile"}
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for bad in ("'../../escape'", "'../kid'"):
        assert bad in errors, errors


# ---- real agent processes ----

PROCESS_KINDS = [p for p in BACKENDS if p.values[0] in ("files", "redis")]


@pytest.mark.parametrize("kind", PROCESS_KINDS)
async def test_bad_ids_from_input_or_storage_never_stop_an_agent_process(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """
    The fleet-killer of issue #10: a child id built from input (``order-42/``) and
    schedule keys naming no run, planted as an older version or a hostile writer might.
    Two agent processes stay up, the parent gets the error at its ``child`` call, the
    planted keys are deleted, and the other runs complete.
    """
    url = await backend_url(kind, request, tmp_path)
    backend = from_url(url)
    client = Conductor(backend)
    client.register(runids_app.order)
    due = f"{now_ms():015d}"
    planted = [f"schedule/{due}-{bad}" for bad in ["..~t", ".~s", "order-42/~s", "a b~t"]]
    for key in planted:
        await backend.put(key, pb.ScheduleEntry(nonce="planted").SerializeToString())
    effects = tmp_path / "effects"
    effects.mkdir()
    agents = [Agent(url, effects, tmp_path, app=Path(runids_app.__file__)) for _ in range(2)]
    try:
        for agent in agents:
            agent.spawn()
        for agent in agents:
            await anyio.to_thread.run_sync(agent.wait_ready)
        bad = await client.start(runids_app.order, "42/", run_id="bad-order")
        good = [await client.start(runids_app.order, str(i), run_id=f"good-{i}") for i in range(3)]
        assert await bad.result(timeout=WAIT) == "refused order-42/"
        for handle in good:
            assert await handle.result(timeout=WAIT) == "ok 6"

        async def gone() -> bool:
            return not set(planted) & set(await backend.list_all("schedule/"))

        await wait_until(gone, WAIT, "the planted keys to be deleted")
        for agent in agents:
            assert agent.process is not None
            assert agent.process.poll() is None, agent.stderr()
        for agent in agents:
            assert await anyio.to_thread.run_sync(agent.stop) == 0, agent.stderr()
        logs = "".join(agent.stderr() for agent in agents)
        assert "Traceback" not in logs, logs
        for key in planted:
            assert key in logs, logs  # each deletion was logged
    finally:
        for agent in agents:
            agent.kill()
        await backend.aclose()
