"""The operator commands of the real `substantial` console script, run as processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import Conductor
from substantial._core.status import RunStatus
from substantial.backends import Backend, FSBackend, from_url
from tests import ops_app
from tests.harness import wait_for_status

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(sys.executable).with_name("substantial"))
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
TIME_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("SUBSTANTIAL_BACKEND", None)
    return env


async def cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script to completion; stdout and stderr as text."""
    command = [SCRIPT, *args] + (["--backend", url] if url else [])
    with anyio.fail_after(60):
        done = await anyio.run_process(command, check=False, env=_env(), cwd=ROOT)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def populate(backend: Backend) -> None:
    """greet-1 completed, wait-1 waiting for "factor", boom-1 failed; no agent left."""
    async with Conductor(backend) as conductor:
        conductor.register(ops_app.greet, ops_app.wait, ops_app.boom)
        greet = await conductor.start(ops_app.greet, "ada", run_id="greet-1")
        wait = await conductor.start(ops_app.wait, 21, run_id="wait-1")
        boom = await conductor.start(ops_app.boom, run_id="boom-1")
        assert await greet.result(timeout=30) == "hello ada"
        await wait_for_status(wait, RunStatus.WAITING)
        await wait_for_status(boom, RunStatus.FAILED)


@pytest.fixture
async def url(tmp_path: Path) -> str:
    backend = FSBackend(tmp_path / "store")
    await populate(backend)
    return f"file://{tmp_path / 'store'}"


def lines(text: str) -> list[str]:
    return text.splitlines()


async def test_list_prints_a_table_and_filters(url: str) -> None:
    result = await cli("list", url=url)
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert re.fullmatch(r"RUN\s+WORKFLOW\s+STATUS\s+STARTED\s+UPDATED", out[0])
    rows = {line.split()[0]: line.split()[1:3] for line in out[1:]}
    assert rows == {
        "greet-1": ["ops.greet", "completed"],
        "wait-1": ["ops.wait", "waiting"],
        "boom-1": ["ops.boom", "failed"],
    }
    assert all(re.search(rf"{TIME}\s+{TIME}$", line) for line in out[1:])
    assert result.stderr == "3 runs\n"

    waiting = await cli("list", "--status", "waiting", url=url)
    assert [line.split()[0] for line in lines(waiting.stdout)[1:]] == ["wait-1"]
    by_workflow = await cli("list", "--workflow", "ops.greet", url=url)
    assert [line.split()[0] for line in lines(by_workflow.stdout)[1:]] == ["greet-1"]
    recent = await cli("list", "--started-after", "1h", url=url)
    assert recent.stderr == "3 runs\n"
    old = await cli("list", "--started-before", "2000-01-01T00:00:00", url=url)
    assert (old.stdout, old.stderr) == ("", "0 runs\n")


async def test_list_json(url: str) -> None:
    result = await cli("list", "--json", "--status", "completed", url=url)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert {k: run[k] for k in ("run_id", "workflow", "status", "args", "result", "error")} == {
        "run_id": "greet-1",
        "workflow": "ops.greet",
        "status": "completed",
        "args": [["ada"], {}],
        "result": "hello ada",
        "error": None,
    }


async def test_bad_arguments_exit_2_with_one_clear_line(url: str) -> None:
    bad_time = await cli("list", "--started-after", "yesterday", url=url)
    assert bad_time.returncode == 2
    assert "'yesterday' is neither an ISO time nor an age like 2h or 30d" in bad_time.stderr
    bad_status = await cli("list", "--status", "asleep", url=url)
    assert bad_status.returncode == 2
    bad_id = await cli("show", "bad id!", url=url)
    assert bad_id.returncode == 2
    assert "invalid run id 'bad id!'" in bad_id.stderr
    bad_json = await cli("send", "wait-1", "factor", "{nope", url=url)
    assert bad_json.returncode == 2
    assert "Invalid value for JSON: not JSON" in bad_json.stderr
    no_backend = await cli("list")
    assert no_backend.returncode == 2
    assert "give --backend URL or set SUBSTANTIAL_BACKEND" in no_backend.stderr
    bad_age = await cli("gc", "--older-than", "5x", url=url)
    assert bad_age.returncode == 2
    assert "'5x' is not a duration like 90s, 30m, 2h, 30d or 1w" in bad_age.stderr


async def test_unknown_run_and_unreachable_backend_are_one_line_exit_1(url: str) -> None:
    missing = await cli("show", "nope", url=url)
    assert (missing.returncode, missing.stderr) == (1, "error: run 'nope' not found\n")
    for command in (["send", "nope", "x"], ["cancel", "nope"], ["result", "nope"]):
        result = await cli(*command, url=url)
        assert (result.returncode, result.stderr) == (1, "error: run 'nope' not found\n")
    down = await cli("list", url="redis://127.0.0.1:1/0")
    assert down.returncode == 1
    assert down.stderr.startswith("error: backend unreachable: ")
    assert len(lines(down.stderr)) == 1


async def test_show_completed_run(url: str) -> None:
    result = await cli("show", "greet-1", url=url)
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert out[:3] == ["run       greet-1", "workflow  ops.greet", "status    completed"]
    assert re.fullmatch(rf"started   {TIME}", out[3])
    assert re.fullmatch(rf"updated   {TIME}", out[4])
    assert out[5:9] == ['args      "ada"', 'result    "hello ada"', "", "timeline"]
    assert re.fullmatch(rf"  {TIME_MS}  started\s+ops\.greet\(\"ada\"\)", out[9])
    assert re.fullmatch(
        rf"  {TIME_MS}  step_completed\s+#0 greet\.<locals>\.<lambda> -> \"hello ada\"", out[10]
    )
    assert re.fullmatch(rf"  {TIME_MS}  completed\s+-> \"hello ada\"", out[11])
    assert len(out) == 12


async def test_show_failed_and_waiting_runs(url: str) -> None:
    failed = lines((await cli("show", "boom-1", url=url)).stdout)
    assert "status    failed" in failed
    assert "error     ValueError: boom" in failed
    assert re.fullmatch(rf"  {TIME_MS}  failed\s+ValueError: boom", failed[-1])

    sent = await cli("send", "wait-1", "factor", "3", url=url)
    assert (sent.returncode, sent.stdout) == (0, "sent factor to wait-1\n")
    waiting = lines((await cli("show", "wait-1", url=url)).stdout)
    assert "status    waiting" in waiting
    assert "args      21" in waiting
    assert "inbox     1 event(s) not yet merged into the log" in waiting


async def test_send_then_result_with_an_agent(url: str, tmp_path: Path) -> None:
    timeout = await cli("result", "wait-1", "--timeout", "0.2", url=url)
    assert (timeout.returncode, timeout.stderr) == (
        1,
        "error: run 'wait-1' has not finished after 0.2s\n",
    )
    async with Conductor(FSBackend(tmp_path / "store")) as agent:
        agent.register(ops_app.wait)
        sent = await cli("send", "wait-1", "factor", "3", url=url)
        assert sent.stdout == "sent factor to wait-1\n"
        result = await cli("result", "wait-1", "--timeout", "30", url=url)
    assert (result.returncode, result.stdout) == (0, "126\n")
    shown = lines((await cli("show", "wait-1", url=url)).stdout)
    assert "result    126" in shown
    assert re.fullmatch(rf"  {TIME_MS}  event_received\s+factor = 3", shown[-2])


async def test_result_of_failed_and_cancelled_runs_exits_1(url: str, tmp_path: Path) -> None:
    failed = await cli("result", "boom-1", url=url)
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == "error: run 'boom-1' failed with ValueError: boom\n"

    cancelled = await cli("cancel", "wait-1", url=url)
    assert (cancelled.returncode, cancelled.stdout) == (0, "cancel requested for wait-1\n")
    async with Conductor(FSBackend(tmp_path / "store")) as agent:
        agent.register(ops_app.wait)
        result = await cli("result", "wait-1", "--timeout", "30", url=url)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: run 'wait-1' ")
    assert "cancel" in result.stderr


async def test_replay_is_a_deploy_gate(url: str, tmp_path: Path) -> None:
    same = await cli("replay", "--app", "tests.ops_app", url=url)
    assert (same.returncode, same.stdout) == (0, "replayed 1 run: 0 would not replay\n")

    changed = await cli("replay", "--app", "tests.ops_app_v2", url=url)
    assert changed.returncode == 1
    assert lines(changed.stdout) == [
        "wait-1 (ops.wait): nondeterminism at position 0: log has a step result of step "
        "'wait.<locals>.<lambda>'; code has sleep(1s)",
        "replayed 1 run: 1 would not replay",
    ]
    everything = await cli("replay", "--app", "tests.ops_app_v2", "--all", url=url)
    assert everything.returncode == 1
    assert (
        "boom-1 (ops.boom): unknown workflow: workflow 'ops.boom' is not in the current code"
        in lines(everything.stdout)
    )
    assert lines(everything.stdout)[-1] == "replayed 3 runs: 2 would not replay"
    chosen = await cli("replay", "--app", "tests.ops_app_v2", "greet-1", url=url)
    assert (chosen.returncode, chosen.stdout) == (0, "replayed 1 run: 0 would not replay\n")
    no_workflows = await cli("replay", "--app", "tests.servers", url=url)
    assert no_workflows.returncode == 2
    assert "defines no @workflow functions" in no_workflows.stderr


async def test_gc_dry_run_then_delete(url: str, tmp_path: Path) -> None:
    nothing = await cli("gc", "--older-than", "30d", url=url)
    assert (nothing.returncode, nothing.stdout) == (0, "deleted 0 runs (0 keys)\n")

    dry = await cli("gc", "--older-than", "0s", "--dry-run", url=url)
    assert dry.returncode == 0, dry.stderr
    out = lines(dry.stdout)
    assert sorted(out[:2]) == ["would delete boom-1", "would delete greet-1"]
    assert re.fullmatch(r"would delete 2 runs \(\d+ keys\)", out[2])
    assert (await cli("list", url=url)).stderr == "3 runs\n"

    done = await cli("gc", "--older-than", "0s", url=url)
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout)[-1] == out[2].replace("would delete", "deleted")
    left = await cli("list", url=url)
    assert [line.split()[0] for line in lines(left.stdout)[1:]] == ["wait-1"]
    leftovers = (tmp_path / "store" / "runs" / "greet-1").rglob("*")
    assert [path for path in leftovers if path.is_file()] == []  # empty folders may stay


async def test_worker_log_lines_name_the_run_and_workflow(tmp_path: Path) -> None:
    store = tmp_path / "store"
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [SCRIPT, "worker", "--app", "tests.ops_app", "--backend", f"file://{store}"],
        env=_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = Conductor(FSBackend(store))  # no agent in this process
        client.register(ops_app.greet)
        handle = await client.start(ops_app.greet, "ada", run_id="greet-9")
        assert await handle.result(timeout=30) == "hello ada"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert re.search(
        r"INFO substantial\.workflow \[ops\.greet greet-9\] \[greet-9\] greeted ada$",
        stderr,
        re.MULTILINE,
    ), stderr
    assert re.search(
        r"INFO substantial\.agent \[ops\.greet greet-9\] run greet-9 completed$",
        stderr,
        re.MULTILINE,
    )
    assert re.search(r"INFO substantial\.agent \[- -\] agent \S+ started$", stderr, re.MULTILINE)


@pytest.mark.redis
async def test_commands_on_redis(redis_server: Any) -> None:
    url = f"{redis_server.url}?prefix=cli-{uuid.uuid4().hex}"
    backend = from_url(url)
    try:
        await populate(backend)
    finally:
        await backend.aclose()
    listed = await cli("list", url=url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == "3 runs\n"
    shown = lines((await cli("show", "greet-1", url=url)).stdout)
    assert shown[:3] == ["run       greet-1", "workflow  ops.greet", "status    completed"]
    sent = await cli("send", "wait-1", "factor", "2", url=url)
    assert sent.stdout == "sent factor to wait-1\n"
    gate = await cli("replay", "--app", "tests.ops_app_v2", url=url)
    assert gate.returncode == 1
    agent_backend = from_url(url)
    try:
        async with Conductor(agent_backend) as agent:
            agent.register(ops_app.wait)
            result = await cli("result", "wait-1", "--timeout", "30", url=url)
    finally:
        await agent_backend.aclose()
    assert (result.returncode, result.stdout) == (0, "84\n")
    cancel = await cli("cancel", "greet-1", url=url)
    assert cancel.returncode == 1
    assert cancel.stderr == (
        "error: run 'greet-1' has finished (completed): the cancellation was not delivered\n"
    )
    gone = await cli("gc", "--older-than", "0s", url=url)
    assert lines(gone.stdout)[-1].startswith("deleted 3 runs (")
    assert (await cli("list", url=url)).stderr == "0 runs\n"
