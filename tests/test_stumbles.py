"""
Each stumble a newcomer hit, now a clear error or simply working: a backend URL that
names a file, an app given as a path, an argument the codec cannot encode, threads in
workflow code, a mistyped change id, and gc leaving empty folders behind.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from substantial import CodecError, Conductor, Context, RunFailed, ops, workflow
from substantial.backends import FSBackend, MemoryBackend
from tests.harness import WAIT, make_conductor
from tests.test_cli_commands import cli

pytestmark = pytest.mark.anyio


@workflow(name="stumbles.opens")
async def opens(c: Context, path: Any, mode: str) -> None:
    return None


@workflow(name="stumbles.threads")
async def threads(c: Context) -> None:
    await asyncio.to_thread(print, "never")


@workflow(name="stumbles.done")
async def done(c: Context) -> int:
    return await c.save(lambda: 1)


async def test_a_backend_that_is_a_file_or_cannot_be_made_is_unhealthy(tmp_path: Path) -> None:
    a_file = tmp_path / "hostname"
    a_file.write_text("x")
    for url, why in (
        (f"file://{a_file}", f"{a_file} is not a folder"),
        ("file:///proc/nope", "the folder /proc/nope does not exist and cannot be made"),
    ):
        checked = await cli("check", url=url)
        assert checked.returncode == 1
        assert why in checked.stdout + checked.stderr
        started = await cli("start", "stumbles.done", url=url)
        assert started.returncode == 1
        assert why in started.stderr
        assert "Traceback" not in started.stderr


async def test_an_argument_the_codec_cannot_encode_is_named() -> None:
    conductor = Conductor(MemoryBackend())
    conductor.register(opens)
    with pytest.raises(CodecError) as refused:
        await conductor.start(opens, io.TextIOWrapper(io.BytesIO()), "r")
    message = str(refused.value)
    assert "'TextIOWrapper' at argument 'path'" in message
    assert "the JSON codec encodes None, bool, int" in message


async def test_threads_in_workflow_code_fail_the_run_saying_what_to_do() -> None:
    async with make_conductor(MemoryBackend(), threads, virtual_clock=True) as conductor:
        handle = await conductor.start(threads)
        with pytest.raises(RunFailed) as failed:
            await handle.result(timeout=WAIT)
    assert failed.value.type_name == "RuntimeError"
    assert "cannot run threads (asyncio.to_thread" in failed.value.error_message
    assert "c.save(fn)" in failed.value.error_message


async def test_gc_on_files_leaves_no_empty_folders(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "store")
    async with make_conductor(backend, done, virtual_clock=True) as conductor:
        handle = await conductor.start(done, run_id="tidy")
        assert await handle.result(timeout=WAIT) == 1
    assert (tmp_path / "store" / "runs" / "tidy").is_dir()
    later = datetime.now(UTC) + timedelta(days=1)
    collected = await ops.gc(backend, timedelta(0), now=later)
    assert collected.runs == ["tidy"]
    assert not (tmp_path / "store" / "runs" / "tidy").exists()


async def test_worker_app_may_be_a_path_and_versions_checks_the_change_id(
    tmp_path: Path,
) -> None:
    app = tmp_path / "myflows.py"
    app.write_text(
        "from substantial import Context, workflow\n\n"
        "@workflow()\n"
        "async def example(c: Context) -> str:\n"
        "    return 'new' if c.version('fraud-check') else 'old'\n"
    )
    url = f"file://{tmp_path / 'store'}"
    replayed = await cli("replay", "--app", str(app), url=url)
    assert replayed.returncode == 0, replayed.stderr
    known = await cli("versions", "fraud-check", "--app", str(app), url=url)
    assert known.returncode == 0, known.stderr
    typo = await cli("versions", "fraud-chek", "--app", str(app), url=url)
    assert typo.returncode == 1
    assert "never mentions 'fraud-chek'" in typo.stderr
