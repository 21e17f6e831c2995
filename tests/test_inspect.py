"""The operator views (substantial.ops) and logging context, on every backend."""

from __future__ import annotations

import json
import logging
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import anyio
import pytest
from click.testing import CliRunner

from substantial import Conductor
from substantial._cli import common as cli_common
from substantial._core.logs import RunContextFilter
from substantial._core.status import RunStatus
from substantial._store.keys import ScheduleEntry, segment_key
from substantial._store.runs import RunStore
from substantial.backends import Backend
from substantial.cli import main
from substantial.ops import (
    check_replay,
    describe_run,
    gc,
    get_run,
    iter_run_ids,
    iter_runs,
    list_runs,
)
from substantial.protocol import substantial_pb2 as pb
from tests import ops_app, ops_app_v2
from tests.harness import wait_for_status


@pytest.fixture
async def runs(backend: Backend) -> Backend:
    """greet-1 completed, wait-1 waiting for "factor", boom-1 failed; no agent left."""
    async with Conductor(backend) as conductor:
        conductor.register(ops_app.greet, ops_app.wait, ops_app.boom)
        greet = await conductor.start(ops_app.greet, "ada", run_id="greet-1")
        wait = await conductor.start(ops_app.wait, 21, run_id="wait-1")
        boom = await conductor.start(ops_app.boom, run_id="boom-1")
        assert await greet.result(timeout=30) == "hello ada"
        await wait_for_status(wait, RunStatus.WAITING)
        await wait_for_status(boom, RunStatus.FAILED)
    return backend


async def test_list_runs_reads_every_run_and_filters(runs: Backend) -> None:
    every = await list_runs(runs)
    assert {(r.run_id, r.workflow, r.status) for r in every} == {
        ("greet-1", "ops.greet", RunStatus.COMPLETED),
        ("wait-1", "ops.wait", RunStatus.WAITING),
        ("boom-1", "ops.boom", RunStatus.FAILED),
    }
    greet = next(r for r in every if r.run_id == "greet-1")
    assert greet.args == [["ada"], {}]
    assert greet.result == "hello ada"
    boom = next(r for r in every if r.run_id == "boom-1")
    assert boom.error == "ValueError: boom"

    assert [r.run_id for r in await list_runs(runs, workflow="ops.wait")] == ["wait-1"]
    assert [r.run_id for r in await list_runs(runs, status=RunStatus.FAILED)] == ["boom-1"]
    finished = await list_runs(runs, status=[RunStatus.COMPLETED, RunStatus.FAILED])
    assert sorted(r.run_id for r in finished) == ["boom-1", "greet-1"]
    now = datetime.now(UTC)
    assert len(await list_runs(runs, started_after=now - timedelta(hours=1))) == 3
    assert await list_runs(runs, started_after=now + timedelta(hours=1)) == []
    assert await list_runs(runs, started_before=now - timedelta(hours=1)) == []
    assert len(await list_runs(runs, started_before=now + timedelta(hours=1))) == 3


async def test_iter_run_ids_skips_long_logs_and_orders_like_keys(backend: Backend) -> None:
    store = RunStore(backend)
    started = pb.Event(at_ms=1, started=pb.Started(workflow="w"))
    ids = ["a", "a-1", "a.b", "a0", "b"]
    for run_id in ids:
        await store.append(run_id, 0, [started])
    for seq in range(1, 30):  # run "a" has a long log
        await store.append("a", seq, [pb.Event(at_ms=2, timer_fired=pb.TimerFired())])
    before = backend.requests["list"]
    found = [run_id async for run_id in iter_run_ids(backend, page=4)]
    assert sorted(found) == sorted(ids)
    assert len(found) == len(set(found))
    # pages of 4 over 5 runs: the 29 extra segments of "a" are skipped, not paged through
    assert backend.requests["list"] - before <= 4


async def test_iter_runs_is_a_cursor_that_reads_only_as_far_as_it_goes(backend: Backend) -> None:
    conductor = Conductor(backend)  # no agent: the runs stay pending
    conductor.register(ops_app.greet)
    ids = [f"run-{i:02}" for i in range(12)]
    for run_id in ids:
        await conductor.start(ops_app.greet, run_id, run_id=run_id)

    async def page(after: str | None, size: int) -> list[str]:
        found = iter_runs(backend, after=after, read=size + 1)
        async with aclosing(found):
            taken = []
            async for run in found:
                taken.append(run.run_id)
                if len(taken) == size:
                    break
        return taken

    before = backend.requests.copy()
    first = await page(None, 4)
    assert first == ids[:4]
    read = backend.requests - before
    assert read["list"] == 1  # one page of keys
    assert 1 <= read["get"] + read["get_many"] <= 5  # 5 of the 12 summaries, at most
    assert await page(first[-1], 4) == ids[4:8]
    assert await page(ids[7], 10) == ids[8:]
    assert await page(ids[-1], 10) == []
    only = [run.run_id async for run in iter_runs(backend, status=RunStatus.PENDING, read=5)]
    assert only == ids


async def test_a_run_without_summary_is_listed_from_its_log(backend: Backend) -> None:
    conductor = Conductor(backend)  # no agent: the run stays pending
    conductor.register(ops_app.greet)
    await conductor.start(ops_app.greet, "bo", run_id="lost-meta")
    await backend.delete("runs/lost-meta/meta")
    (summary,) = await list_runs(backend)
    assert (summary.run_id, summary.workflow, summary.status) == (
        "lost-meta",
        "ops.greet",
        RunStatus.PENDING,
    )
    assert summary.args == [["bo"], {}]


async def test_describe_run_gives_the_timeline(runs: Backend) -> None:
    details = await describe_run(runs, "greet-1")
    assert details.summary.status is RunStatus.COMPLETED
    assert [event.kind for event in details.history] == ["started", "step_completed", "completed"]
    assert details.history[1].details["result"] == "hello ada"
    assert details.history[2].details["result"] == "hello ada"
    assert details.lease_owner == ""
    await Conductor(runs).handle("wait-1").send("factor", {"n": 3})
    waiting = await describe_run(runs, "wait-1")
    assert waiting.inbox == 1
    assert (await get_run(runs, "wait-1")).status is RunStatus.WAITING


async def test_check_replay_finds_runs_the_new_code_breaks(runs: Backend) -> None:
    same = await check_replay([ops_app.greet, ops_app.wait, ops_app.boom], runs)
    assert [(c.run_id, c.outcome) for c in same] == [("wait-1", "ok")]  # unfinished only

    new_code = [ops_app_v2.greet, ops_app_v2.wait]
    changed = await check_replay(new_code, runs, include_finished=True)
    by_run = {c.run_id: c for c in changed}
    assert by_run["greet-1"].ok
    wait = by_run["wait-1"]
    assert (wait.outcome, wait.position, wait.code) == ("nondeterminism", 0, "sleep(1s)")
    assert "wait.<locals>.<lambda>" in wait.logged
    assert by_run["boom-1"].outcome == "unknown workflow"

    chosen = await check_replay([ops_app_v2.greet, ops_app_v2.wait], runs, ["greet-1", "nope"])
    assert [(c.run_id, c.outcome) for c in chosen] == [("greet-1", "ok"), ("nope", "not found")]


async def test_check_replay_writes_nothing(runs: Backend) -> None:
    before = {key: await runs.get(key) for key in await runs.list_all("")}
    writes = sum(runs.requests[op] for op in ("put", "create", "replace", "delete"))
    await check_replay([ops_app_v2.greet, ops_app_v2.wait], runs, include_finished=True)
    assert sum(runs.requests[op] for op in ("put", "create", "replace", "delete")) == writes
    assert {key: await runs.get(key) for key in await runs.list_all("")} == before


async def test_gc_deletes_old_finished_runs_and_nothing_else(runs: Backend) -> None:
    store = RunStore(runs)
    await store.schedule("greet-1", 5, "stray")  # a late send's leftover
    later = datetime.now(UTC) + timedelta(days=31)

    recent = await gc(runs, timedelta(days=30))
    assert recent.runs == []
    dry = await gc(runs, timedelta(days=30), now=later, dry_run=True)
    assert sorted(dry.runs) == ["boom-1", "greet-1"]
    assert await runs.list_all("runs/greet-1/") != []

    done = await gc(runs, timedelta(days=30), now=later)
    assert sorted(done.runs) == ["boom-1", "greet-1"]
    assert done.keys == dry.keys
    for run_id in ("greet-1", "boom-1"):
        assert await runs.list_all(f"runs/{run_id}/") == []
        assert await runs.get(f"leases/{run_id}") is None
    assert not [key for key in await runs.list_all("schedule/") if "greet-1" in key]
    assert [r.run_id for r in await list_runs(runs)] == ["wait-1"]
    assert (await describe_run(runs, "wait-1")).summary.status is RunStatus.WAITING


async def test_gc_leaves_a_run_whose_lease_an_agent_holds(runs: Backend) -> None:
    store = RunStore(runs)
    assert await store.acquire("greet-1", "someone-else", 60_000) is not None
    later = datetime.now(UTC) + timedelta(days=31)
    outcome = await gc(runs, timedelta(days=30), now=later)
    assert outcome.busy == ["greet-1"]
    assert outcome.runs == ["boom-1"]
    assert await runs.get("runs/greet-1/meta") is not None


async def test_gc_removes_schedule_keys_of_its_runs_only(runs: Backend) -> None:
    store = RunStore(runs)
    await store.schedule("greet-1", 10, "x")
    await store.schedule("wait-1", 10, "x")
    await gc(runs, timedelta(0), now=datetime.now(UTC) + timedelta(seconds=1))
    left = [ScheduleEntry.parse(key) for key in await runs.list_all("schedule/")]
    assert [(entry.run_id, entry.due_ms) for entry in left if entry] == [("wait-1", 10)]
    assert len(left) == 1


async def test_log_lines_carry_run_id_and_workflow(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RunContextFilter())
    with caplog.at_level(logging.INFO):
        async with Conductor(backend) as conductor:
            conductor.register(ops_app.greet)
            handle = await conductor.start(ops_app.greet, "ada", run_id="logged-1")
            assert await handle.result(timeout=30) == "hello ada"
        logging.getLogger("elsewhere").info("outside any run")
    by_message = {record.getMessage(): record for record in caplog.records}
    greeting = by_message["[logged-1] greeted ada"]
    assert (greeting.run_id, greeting.workflow) == ("logged-1", "ops.greet")  # type: ignore[attr-defined]
    done = by_message["run logged-1 completed"]
    assert (done.run_id, done.workflow) == ("logged-1", "ops.greet")  # type: ignore[attr-defined]
    outside = by_message["outside any run"]
    assert (outside.run_id, outside.workflow) == ("-", "-")  # type: ignore[attr-defined]


# ---- a run whose first segment is corrupt is shown, never skipped ----


async def _plant_corrupt_run(backend: Backend) -> None:
    """A run with no summary whose first segment is garbage bytes."""
    await backend.put(segment_key("broken-1", 0), b"\xff\xfe garbage, not a segment \x00\x01")


async def test_list_and_gc_show_a_run_whose_first_segment_is_corrupt(runs: Backend) -> None:
    await _plant_corrupt_run(runs)
    every = {r.run_id: r for r in await list_runs(runs)}
    assert set(every) == {"greet-1", "wait-1", "boom-1", "broken-1"}
    broken = every["broken-1"]
    assert broken.status is RunStatus.CORRUPT
    assert broken.error.startswith("CorruptLog: ")
    assert [r.run_id for r in await list_runs(runs, status=RunStatus.CORRUPT)] == ["broken-1"]
    assert (await get_run(runs, "broken-1")).status is RunStatus.CORRUPT

    later = datetime.now(UTC) + timedelta(days=31)
    done = await gc(runs, timedelta(days=30), now=later)
    assert "broken-1" not in done.runs
    assert await runs.get(segment_key("broken-1", 0)) is not None


def _cli_url(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> str:
    """A URL the CLI opens ``backend``'s data with (memory: the same object)."""
    kind = type(backend).__name__
    if kind == "FSBackend":
        return f"file://{backend.root}"  # type: ignore[attr-defined]
    if kind == "RedisBackend":
        return f"{backend.url}?prefix={backend.prefix}"  # type: ignore[attr-defined]
    if kind == "S3Backend":
        s3 = cast(Any, backend)
        return f"s3://{s3.bucket}/{s3.prefix}?endpoint_url={s3.endpoint_url}&region=us-east-1"
    monkeypatch.setattr(cli_common, "from_url", lambda url: backend)
    return "memory://"


async def test_cli_list_shows_a_run_whose_first_segment_is_corrupt(
    runs: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _plant_corrupt_run(runs)
    url = _cli_url(runs, monkeypatch)
    invoke = partial(CliRunner().invoke, main)
    table = await anyio.to_thread.run_sync(invoke, ["list", "--backend", url])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[1:]}
    assert rows["broken-1"][0] == "corrupt"
    as_json = await anyio.to_thread.run_sync(invoke, ["list", "--json", "--backend", url])
    (broken,) = [run for run in json.loads(as_json.stdout) if run["run_id"] == "broken-1"]
    assert broken["status"] == "corrupt"
    assert broken["error"].startswith("CorruptLog: ")
