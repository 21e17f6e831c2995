"""
What an operator meets at the edges of the public API: events to a finished run are
refused, a timed-out wait says what it waited for, a workflow started by name from a
process without its code, and mistakes in register/start named as such.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from substantial import (
    Conductor,
    Context,
    Handle,
    InvalidArguments,
    NotAWorkflow,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStatus,
    RunTerminated,
    ops,
    workflow,
)
from substantial.backends import Backend
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, wait_for_status, wait_until

pytestmark = pytest.mark.anyio


@workflow(name="operator.echo")
async def echo(c: Context, value: int) -> int:
    return value


@workflow(name="operator.wait")
async def wait(c: Context) -> object:
    return await c.receive("go")


@workflow(name="operator.chained")
async def chained(c: Context, left: int) -> int:
    if left:
        await c.continue_using(chained, left - 1)
    return 0


@pytest.mark.conductor(echo, wait, chained)
async def test_send_and_cancel_to_a_finished_run_are_refused(conductor: Conductor) -> None:
    handle = await conductor.start(echo, 7, run_id="done")
    assert await handle.result(timeout=WAIT) == 7
    with pytest.raises(RunFinished, match=r"run 'done' has finished \(completed\)") as sent:
        await handle.send("late", 1)
    assert sent.value.status == "completed"
    assert "event 'late' was not delivered" in str(sent.value)
    with pytest.raises(RunFinished, match="the cancellation was not delivered"):
        await handle.cancel()
    # A run that continued as another says where it went.
    first = await conductor.start(chained, 1, run_id="chain")
    assert await first.result(timeout=WAIT) == 0
    with pytest.raises(RunFinished, match="continued as run") as moved:
        await first.send("late")
    assert moved.value.continued_as
    # A live run still takes events.
    live = await conductor.start(wait, run_id="live")
    await live.send("go", "yes")
    assert await live.result(timeout=WAIT) == "yes"


@pytest.mark.conductor(wait)
async def test_a_result_that_times_out_says_which_run_and_how_long(
    conductor: Conductor,
) -> None:
    handle = await conductor.start(wait, run_id="patient")
    with pytest.raises(TimeoutError, match=r"run 'patient' has not finished after 0.2s"):
        await handle.result(timeout=0.2)


async def test_a_run_started_by_name_without_its_code_runs_on_an_agent(
    backend: Backend,
) -> None:
    from tests.harness import make_conductor

    starter = Conductor(backend)  # registers nothing: it only has the name
    handle = await starter.start("operator.echo", 5, run_id="by-name")
    bad = await starter.start("operator.echo", "too", "many", run_id="bad-args")
    async with make_conductor(backend, echo):
        assert await handle.result(timeout=WAIT) == 5
        with pytest.raises(RunFailed) as failed:
            await bad.result(timeout=WAIT)
    assert failed.value.type_name.endswith("InvalidArguments")
    assert "bad arguments for workflow 'operator.echo'" in failed.value.error_message


async def test_register_and_start_name_what_is_wrong(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    conductor = Conductor(backend)

    async def plain(c: Context) -> None:
        return None

    with pytest.raises(NotAWorkflow, match="decorate it with @workflow"):
        await conductor.start(plain)  # type: ignore[arg-type]
    with pytest.raises(NotAWorkflow, match="decorate it with @workflow"):
        conductor.register(plain)  # type: ignore[arg-type]

    @workflow(name="operator.echo")
    async def impostor(c: Context, value: int) -> int:
        return -value

    conductor.register(echo)
    conductor.register(echo)  # the same one again is fine
    with pytest.raises(NotAWorkflow, match=r"two workflows named 'operator\.echo'"):
        conductor.register(impostor)
    with pytest.raises(InvalidArguments):
        await conductor.start(echo, 1, 2)

    async def scripted(c: Context) -> None:
        return None

    scripted.__module__ = "__main__"
    with caplog.at_level(logging.WARNING, logger="substantial"):
        conductor.register(workflow(scripted))
    assert any("named after the script" in r.getMessage() for r in caplog.records)


@workflow(name="operator.child_of_terminated")
async def parent_of(c: Context) -> str:
    try:
        await c.child(wait, run_id=f"{c.run_id}-child")
    except RunFailed as exc:
        return exc.type_name
    return "child completed"


@workflow(name="operator.holds_a_child")
async def holds_a_child(c: Context) -> None:
    await c.start_child(wait, run_id=f"{c.run_id}-kid")
    await c.receive("never")


@pytest.mark.conductor(echo, wait, parent_of, holds_a_child)
async def test_terminate_ends_a_run_nobody_can_run(conductor: Conductor) -> None:
    # A run of a workflow no agent knows waits for ever, untouched: terminate ends it
    # (any agent of its queue carries that out).
    orphan = await conductor.start("operator.gone", run_id="orphan")
    assert await orphan.status() is RunStatus.PENDING
    await orphan.terminate("its code was deleted")
    with pytest.raises(RunTerminated, match="terminated: its code was deleted") as ended:
        await orphan.result(timeout=WAIT)
    assert ended.value.reason == "its code was deleted"
    assert await orphan.status() is RunStatus.TERMINATED
    assert (await orphan.history())[-1].kind == "terminated"
    with pytest.raises(RunFinished, match=r"\(terminated\)"):
        await orphan.terminate()

    # gc takes it like any finished run.
    # (An agent may hold its lease a moment: a leftover retry entry wakes it once more.)
    async def collected() -> bool:
        later = datetime.now(UTC) + timedelta(1)
        return "orphan" in (await ops.gc(conductor.backend, timedelta(0), now=later)).runs

    await wait_until(collected, WAIT, "gc to delete the terminated run")


@pytest.mark.conductor(echo, wait, parent_of, holds_a_child)
async def test_a_terminated_child_fails_its_parents_wait_and_children_are_cancelled(
    conductor: Conductor,
) -> None:
    parent = await conductor.start(parent_of, run_id="p")
    child = conductor.handle("p-child")
    await wait_for_status(child, RunStatus.WAITING)
    await child.terminate()
    assert (await parent.result(timeout=WAIT)).endswith("RunTerminated")

    holder = await conductor.start(holds_a_child, run_id="h")
    kid = conductor.handle("h-kid")
    await wait_for_status(kid, RunStatus.WAITING)
    await wait_for_status(holder, RunStatus.WAITING)
    await holder.terminate("enough")
    with pytest.raises(RunTerminated):
        await holder.result(timeout=WAIT)
    with pytest.raises(RunCancelled):
        await kid.result(timeout=WAIT)


async def test_start_and_terminate_from_the_terminal(tmp_path: Path) -> None:
    from tests.harness import make_conductor
    from tests.test_cli_commands import cli

    url = f"file://{tmp_path / 'store'}"
    async with make_conductor(url, echo, wait):
        done = await cli("start", "operator.echo", "[21]", "--run-id", "s1", "--wait", url=url)
        assert (done.returncode, done.stdout) == (0, "21\n"), done.stderr
        keyword = await cli("start", "operator.echo", '{"value": 4}', "--wait", "--json", url=url)
        assert keyword.returncode == 0, keyword.stderr
        printed = json.loads(keyword.stdout)
        assert printed["result"] == 4
        assert printed["workflow"] == "operator.echo"
        bad = await cli("start", "operator.echo", '"x"', url=url)
        assert bad.returncode == 2
        assert "JSON array" in bad.stderr
        failed = await cli("start", "operator.echo", "[1, 2]", "--wait", url=url)
        assert failed.returncode == 1
        assert "InvalidArguments" in failed.stderr

        waiting = await cli("start", "operator.wait", "--run-id", "w1", url=url)
        assert (waiting.returncode, waiting.stdout) == (0, "w1\n")
        ended = await cli("terminate", "w1", "--reason", "by hand", url=url)
        assert (ended.returncode, ended.stdout) == (0, "terminate requested for w1\n")
        result = await cli("result", "w1", "--timeout", "30", url=url)
        assert result.returncode == 1
        assert "run 'w1' was terminated: by hand" in result.stderr
        late = await cli("send", "w1", "go", url=url)
        assert late.returncode == 1
        assert "has finished (terminated)" in late.stderr


RELEASES: dict[str, threading.Event] = {}


@workflow(name="operator.slow_step")
async def slow_step(c: Context) -> bool:
    await c.sleep(5)  # its status says sleeping, then the step begins
    release = RELEASES[c.run_id]
    return await c.save(lambda: release.wait(30))


@pytest.mark.conductor(slow_step)
async def test_a_run_in_a_long_step_shows_running(conductor: Conductor) -> None:
    run_id = f"slow-{conductor.backend.name}"
    RELEASES[run_id] = threading.Event()
    handle = await conductor.start(slow_step, run_id=run_id)
    try:
        await wait_for_status(handle, RunStatus.RUNNING, timeout=15)
        listed = await ops.get_run(conductor.backend, run_id)
        assert listed.status is RunStatus.RUNNING
        assert listed.wake_at is None  # not "sleeping, wakes at <a time gone by>"
    finally:
        RELEASES[run_id].set()
    assert await handle.result(timeout=WAIT) is True


async def test_json_pages_and_counts_from_the_terminal(tmp_path: Path) -> None:
    from substantial.backends import FSBackend
    from tests.test_cli_commands import cli, populate

    await populate(FSBackend(tmp_path / "store"))
    url = f"file://{tmp_path / 'store'}"
    shown = await cli("show", "greet-1", "--json", url=url)
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert details["status"] == "completed"
    assert details["result"] == "hello ada"
    assert details["history"][0]["kind"] == "started"
    assert details["history"][-1]["kind"] == "completed"

    result = await cli("result", "greet-1", "--json", url=url)
    assert json.loads(result.stdout) == {"run_id": "greet-1", "result": "hello ada"}

    first = await cli("list", "--limit", "2", url=url)
    page_one = [line.split()[0] for line in first.stdout.splitlines()[1:]]
    assert len(page_one) == 2
    assert first.stderr.splitlines()[-1] == f"more: --after {page_one[-1]}"
    rest = await cli("list", "--limit", "2", "--after", page_one[-1], url=url)
    page_two = [line.split()[0] for line in rest.stdout.splitlines()[1:]]
    assert len(page_two) == 1
    assert set(page_one + page_two) == {"greet-1", "wait-1", "boom-1"}
    assert "more:" not in rest.stderr

    counted = await cli("stats", "--json", url=url)
    assert json.loads(counted.stdout) == {
        "total": 3,
        "by_status": {"completed": 1, "failed": 1, "waiting": 1},
        "by_workflow": {
            "ops.boom": {"failed": 1},
            "ops.greet": {"completed": 1},
            "ops.wait": {"waiting": 1},
        },
    }
    table = await cli("stats", url=url)
    assert table.returncode == 0
    assert "ops.greet" in table.stdout


@workflow(name="operator.approval")
async def approval(c: Context) -> object:
    return await c.receive("approve", timeout=3600)


async def _parked_start(conductor: Conductor, wf: Any, run_id: str) -> Handle[Any]:
    """
    A run its agent parks: its log's segment 1, planted before the start, records a
    step where the code receives, so it no longer replays. (A run of a workflow no
    agent knows is no longer parked: no agent claims it.)
    """
    step = pb.StepCompleted(position=0, name="not.in.the.code")
    await conductor.store.append(run_id, 1, [pb.Event(at_ms=1, step_completed=step)])
    return await conductor.start(wf, run_id=run_id)


@pytest.mark.real_clock  # the hour-long timeout must not pass
@pytest.mark.conductor(wait, holds_a_child, approval)
async def test_a_summary_says_what_a_run_waits_for_until_when_and_who_had_it(
    conductor: Conductor,
) -> None:
    backend, agent = conductor.backend, conductor.name
    timed = await conductor.start(approval, run_id="timed")
    holder = await conductor.start(holds_a_child, run_id="holder")
    gone = await _parked_start(conductor, approval, "gone")
    await wait_for_status(timed, RunStatus.SLEEPING)
    await wait_for_status(holder, RunStatus.WAITING)
    await wait_for_status(gone, RunStatus.PARKED)

    summary = await ops.get_run(backend, "timed")
    assert summary.waiting_for == ("event 'approve'",)
    assert summary.wake_at is not None
    assert summary.wake_at - summary.created > timedelta(minutes=59)  # the timeout
    assert summary.agent == agent
    summary = await ops.get_run(backend, "holder")
    assert set(summary.waiting_for) == {"event 'never'", "child 'holder-kid'"}
    summary = await ops.get_run(backend, "gone")
    assert summary.waiting_for == ()
    assert summary.wake_at is not None  # when it is retried
    assert summary.agent == agent

    await timed.send("approve", True)
    assert await timed.result(timeout=WAIT) is True
    done = await ops.get_run(backend, "timed")
    assert (done.waiting_for, done.wake_at) == ((), None)


async def test_show_and_list_say_what_a_run_waits_for(tmp_path: Path) -> None:
    from tests.harness import make_conductor
    from tests.test_cli_commands import cli

    url = f"file://{tmp_path / 'store'}"
    async with make_conductor(url, approval, name="agent-7") as conductor:
        handle = await conductor.start(approval, run_id="a1")
        gone = await _parked_start(conductor, approval, "g1")
        await wait_for_status(handle, RunStatus.SLEEPING)
        await wait_for_status(gone, RunStatus.PARKED)
        shown = await cli("show", "a1", url=url)
        assert shown.returncode == 0, shown.stderr
        head = shown.stdout.split("\n\n")[0].splitlines()
        lines = {line[:9].strip(): line[10:] for line in head}  # "label     value"
        assert lines["waits for"].startswith("event 'approve' (times out at ")
        assert lines["agent"].startswith("agent-7 (lease until") or lines["agent"] == (
            "none now (last: agent-7)"
        )
        parked = await cli("show", "g1", url=url)
        assert "retry at " in parked.stdout
        assert "operator.approval" in parked.stdout
        listed = await cli("list", "--json", url=url)
        runs = {run["run_id"]: run for run in json.loads(listed.stdout)}
        assert runs["a1"]["waiting_for"] == ["event 'approve'"]
        assert runs["a1"]["agent"] == "agent-7"
        assert runs["g1"]["wake_at"] is not None
