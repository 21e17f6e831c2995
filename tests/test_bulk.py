"""
Bulk actions by filter (issue #16): ``conductor.runs(...)`` pages through summaries,
and ``substantial cancel|terminate|retry|pause|resume`` with filters act on every run
selected, with a progress bar on a terminal and a count of what was done.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import Conductor, Context, RetryPolicy, RunStatus, workflow
from substantial._store.keys import inbox_prefix
from substantial.backends import Backend, FSBackend, MemoryBackend
from substantial.codec import encode_payload
from substantial.ops import RunFilter, bulk
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(sys.executable).with_name("substantial"))


@workflow(name="bulk.waits")
async def waits(c: Context) -> str:
    return str(await c.receive("go"))


@workflow(name="bulk.billing", queue="billing")
async def billing(c: Context) -> str:
    return str(await c.receive("go"))


@workflow(name="bulk.quick")
async def quick(c: Context) -> int:
    return await c.save(lambda: 1)


@workflow(name="bulk.breaks")
async def breaks(c: Context, n: int) -> int:
    first = await c.save(lambda: n)

    def broken() -> int:
        raise ValueError("not yet")

    return first + await c.save(broken, retry=RetryPolicy(max_attempts=1))


@workflow(name="bulk.breaks")
async def breaks_fixed(c: Context, n: int) -> int:
    first = await c.save(lambda: n)

    def broken() -> int:
        return 100

    return first + await c.save(broken)


async def test_runs_filters_and_pages_through_summaries() -> None:
    backend = MemoryBackend()
    async with make_conductor(backend, waits, quick, virtual_clock=True) as conductor:
        for i in range(7):
            await conductor.start(waits, run_id=f"w-{i}")
        done = await conductor.start(quick, run_id="q-0")
        await done.result(timeout=WAIT)
        for i in range(7):
            await wait_for_status(conductor.handle(f"w-{i}"), RunStatus.WAITING)

    reader = Conductor(backend)  # no agent: every request counted is the listing's
    before = backend.requests.copy()
    waiting = [s.run_id async for s in reader.runs(status=RunStatus.WAITING, page=3)]
    assert waiting == [f"w-{i}" for i in range(7)]
    assert backend.requests["get"] - before["get"] == 8  # one summary per run, no log read
    assert [s.run_id async for s in reader.runs(workflow="bulk.quick")] == ["q-0"]
    statuses = {RunStatus.COMPLETED, RunStatus.WAITING}
    assert len([s async for s in reader.runs(status=statuses)]) == 8
    later = datetime.now(UTC) + timedelta(days=1)
    assert [s async for s in reader.runs(started_after=later)] == []
    assert len([s async for s in reader.runs(started_before=later)]) == 8


async def test_bulk_retry_forks_each_failed_run_once() -> None:
    async with make_conductor(MemoryBackend(), breaks, quick, virtual_clock=True) as conductor:
        for i in range(3):
            await conductor.start(breaks, i, run_id=f"b-{i}")
        await (await conductor.start(quick, run_id="q")).result(timeout=WAIT)
        for i in range(3):
            await wait_for_status(conductor.handle(f"b-{i}"), RunStatus.FAILED)
        conductor.register(breaks_fixed, replace=True)
        failed = RunFilter(status=RunStatus.FAILED)

        dry = await bulk(conductor.backend, conductor.handle, "retry", failed, dry_run=True)
        assert (dry.selected, dry.done) == (["b-0", "b-1", "b-2"], {})
        seen: list[tuple[int, int | None]] = []
        result = await bulk(conductor.backend, conductor.handle, "retry", failed,
                            progress=lambda done, total: seen.append((done, total)))  # fmt: skip
        assert result.done == {f"b-{i}": f"b-{i}-retry" for i in range(3)}
        assert seen[-1] == (3, 3)
        for i in range(3):
            assert await conductor.handle(f"b-{i}-retry").result(timeout=WAIT) == i + 100
        # again: the originals are still failed, and their retry is the same fork
        again = await bulk(conductor.backend, conductor.handle, "retry", failed)
        assert again.done == result.done
        everything = await bulk(conductor.backend, conductor.handle, "retry", RunFilter())
        assert everything.skipped["q"].startswith("it has not failed (it is completed)")


@pytest.mark.slow  # 1,000 runs through an agent on files: in the second pass, two at a time
@pytest.mark.timeout(300)
async def test_bulk_cancel_of_1000_waiting_runs_from_the_terminal(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "runs", fsync=False)
    url = f"file://{tmp_path / 'runs'}"
    started = time.monotonic()
    async with make_conductor(backend, waits, quick, concurrency=64) as conductor:
        for i in range(1000):
            await conductor.start(waits, run_id=f"w-{i:04d}")
        await (await conductor.start(quick, run_id="q")).result(timeout=WAIT)

        async def all_waiting() -> bool:
            runs = conductor.runs(status=RunStatus.WAITING, workflow="bulk.waits")
            return len([s async for s in runs]) == 1000

        # an upper bound: 7-15 s alone, over 90 s at load average 18
        await wait_until(all_waiting, 200, what="1000 waiting runs", every=0.5)
    ready = time.monotonic() - started

    output, code, took = await anyio.to_thread.run_sync(
        _on_a_terminal,
        ["cancel", "--status", "waiting", "--workflow", "bulk.waits", "--backend", url],
    )
    assert code == 0, output
    assert "1000/1000" in output  # tqdm's bar reached the end
    assert "1000 runs selected: 1000 cancel requested, 0 skipped, 0 failed" in output
    for i in range(1000):  # each waiting run got one cancellation, the other none
        assert len(await backend.list_all(inbox_prefix(f"w-{i:04d}"))) == 1, i
    assert await backend.list_all(inbox_prefix("q")) == []
    print(f"1000 waiting runs made in {ready:.1f}s; bulk cancel on a terminal took {took:.1f}s")

    async with make_conductor(backend, waits, quick) as conductor:  # and they are real
        await wait_for_status(conductor.handle("w-0000"), RunStatus.CANCELLED)


async def test_a_summary_written_before_the_start_s_names_the_workflow() -> None:
    # An agent that reaches a run between its segment 0 and its summary (a start that
    # died, or a slow one) writes the summary from the log, so `--workflow` finds it.
    backend = MemoryBackend()
    store = Conductor(backend).store
    started = pb.Started(run_id="early", workflow="bulk.waits", args=encode_payload([[], {}]))
    await store.schedule("early", store.clock.now_ms(), "s")
    assert await store.append("early", 0, [pb.Event(at_ms=store.clock.now_ms(), started=started)])
    async with make_conductor(backend, waits) as conductor:
        await wait_for_status(conductor.handle("early"), RunStatus.WAITING)
        found = [s.run_id async for s in conductor.runs(workflow="bulk.waits")]
        assert found == ["early"]


def _on_a_terminal(args: list[str]) -> tuple[str, int, float]:
    """Run the console script with stdout and stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    process = subprocess.Popen([SCRIPT, *args], stdout=slave, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = process.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode(errors="replace"), code, time.monotonic() - began


async def test_filters_or_a_run_not_both(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'runs'}"
    both = await anyio.run_process(
        [SCRIPT, "cancel", "r-1", "--status", "waiting", "--backend", url], check=False
    )
    assert both.returncode == 2
    assert b"give RUN or filters" in both.stderr
    neither = await anyio.run_process([SCRIPT, "terminate", "--backend", url], check=False)
    assert neither.returncode == 2
    dry = await anyio.run_process(
        [SCRIPT, "terminate", "--status", "waiting", "--dry-run", "--backend", url], check=False
    )
    assert dry.returncode == 0, dry.stderr
    assert b"0 runs selected; dry run: nothing done" in dry.stderr


async def test_fork_and_retry_from_the_terminal(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "runs")
    url = f"file://{tmp_path / 'runs'}"
    async with make_conductor(backend, breaks) as conductor:
        await conductor.start(breaks, 1, run_id="b")
        await wait_for_status(conductor.handle("b"), RunStatus.FAILED)
    fork = await anyio.run_process([SCRIPT, "fork", "b", "--at", "1", "--run-id", "b-f",
                                    "--backend", url], check=False)  # fmt: skip
    assert (fork.returncode, fork.stdout) == (0, b"b-f\n"), fork.stderr
    retry = await anyio.run_process([SCRIPT, "retry", "b", "--backend", url], check=False)
    assert (retry.returncode, retry.stdout) == (0, b"b-retry\n"), retry.stderr
    bad = await anyio.run_process([SCRIPT, "fork", "b", "--at", "7", "--backend", url],
                                  check=False)  # fmt: skip
    assert bad.returncode == 1
    assert b"error: cannot fork run 'b': its log records nothing at #7" in bad.stderr
    show = await anyio.run_process([SCRIPT, "show", "b", "--backend", url], check=False)
    assert b"fork      b-f at #1" in show.stdout
    assert b"fork      b-retry at #1 (retry)" in show.stdout
    shown = await anyio.run_process([SCRIPT, "show", "b-f", "--backend", url], check=False)
    assert b"forked    from b at #1" in shown.stdout


@pytest.mark.conductor(waits, billing, quick)
async def test_bulk_pause_and_resume_of_one_queue(conductor: Conductor, backend: Backend) -> None:
    for i in range(3):
        await conductor.start(billing, run_id=f"bill-{i}")
        await conductor.start(waits, run_id=f"dflt-{i}")
    ended = await conductor.start(quick, run_id="bill-done", queue="billing")
    await ended.result(timeout=WAIT)
    bills, others = [f"bill-{i}" for i in range(3)], [f"dflt-{i}" for i in range(3)]
    for run_id in bills + others:
        await wait_for_status(conductor.handle(run_id), RunStatus.WAITING)
    in_billing = [s async for s in conductor.runs(queue="billing")]
    assert [s.run_id for s in in_billing] == [*bills, "bill-done"]
    assert {s.to_json()["queue"] for s in in_billing} == {"billing"}
    assert [s.run_id async for s in conductor.runs(queue="default")] == others

    def act(action: str, where: RunFilter, dry_run: bool = False) -> Any:
        return bulk(conductor.backend, conductor.handle, action, where, dry_run=dry_run)

    dry = await act("pause", RunFilter(queue="billing"), dry_run=True)
    assert (dry.selected, dry.done) == ([*bills, "bill-done"], {})
    for run_id in bills:  # the dry run asked nothing of any run
        assert await backend.list_all(inbox_prefix(run_id)) == [], run_id
    paused = await act("pause", RunFilter(queue="billing"))
    assert (sorted(paused.done), paused.errors) == (bills, {})
    assert list(paused.skipped) == ["bill-done"]
    assert paused.skipped["bill-done"].startswith("it had ended")
    for run_id in bills:
        await wait_for_status(conductor.handle(run_id), RunStatus.PAUSED)
    for run_id in others:  # the other queue was left alone
        assert await backend.list_all(inbox_prefix(run_id)) == [], run_id
        assert await conductor.handle(run_id).status() is RunStatus.WAITING

    again = await act("pause", RunFilter(queue="billing", status=RunStatus.PAUSED))
    assert (again.done, again.skipped) == ({}, dict.fromkeys(bills, "it is paused already"))
    not_paused = await act("resume", RunFilter(queue="default"))
    assert not_paused.done == {}
    assert not_paused.skipped == dict.fromkeys(others, "it is not paused (it is waiting)")
    resumed = await act("resume", RunFilter(queue="billing"))
    assert sorted(resumed.done) == bills
    assert resumed.skipped["bill-done"].startswith("it had ended")
    for run_id in bills + others:
        await conductor.handle(run_id).send("go", run_id)
    for run_id in bills + others:
        assert await conductor.handle(run_id).result(timeout=WAIT) == run_id


async def test_bulk_pause_and_resume_from_the_terminal(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "runs", fsync=False)
    url = f"file://{tmp_path / 'runs'}"

    async def cli(*args: str, code: int = 0) -> tuple[str, str]:
        done = await anyio.run_process([SCRIPT, *args, "--backend", url], check=False)
        assert done.returncode == code, done.stderr
        return done.stdout.decode(), done.stderr.decode()

    async with make_conductor(backend, waits, billing) as conductor:
        for run_id in ("bill-0", "bill-1"):
            await conductor.start(billing, run_id=run_id)
        await conductor.start(waits, run_id="dflt")
        for run_id in ("bill-0", "bill-1", "dflt"):
            await wait_for_status(conductor.handle(run_id), RunStatus.WAITING)

        output, code, _ = await anyio.to_thread.run_sync(
            _on_a_terminal, ["pause", "--queue", "billing", "--backend", url]
        )
        assert code == 0, output
        assert "2/2" in output  # the progress bar reached the end
        assert "2 runs selected: 2 pause requested, 0 skipped, 0 failed" in output
        for run_id in ("bill-0", "bill-1"):
            await wait_for_status(conductor.handle(run_id), RunStatus.PAUSED)
        assert await conductor.handle("dflt").status() is RunStatus.WAITING
        listed, _ = await cli("list", "--queue", "billing", "--status", "paused", "--json")
        assert [run["run_id"] for run in json.loads(listed)] == ["bill-0", "bill-1"]

        out, err = await cli("resume", "--queue", "billing", "--dry-run")
        assert out == "bill-0\nbill-1\n"
        assert "2 runs selected; dry run: nothing done" in err
        _, err = await cli("pause", "bill-0", "--queue", "billing", code=2)
        assert "give RUN or filters" in err
        out, _ = await cli("resume", "bill-0")  # the one-run form, as before
        assert out == "resume requested for bill-0\n"
        await wait_for_status(conductor.handle("bill-0"), RunStatus.WAITING)
        _, err = await cli("resume", "--queue", "billing", "--workflow", "bulk.billing")
        assert "2 runs selected: 1 resume requested, 1 skipped, 0 failed" in err
        assert "skipped bill-0: it is not paused (it is waiting)" in err
        for run_id in ("bill-0", "bill-1", "dflt"):
            await conductor.handle(run_id).send("go", "!")
        for run_id in ("bill-0", "bill-1", "dflt"):
            assert await conductor.handle(run_id).result(timeout=WAIT) == "!"
