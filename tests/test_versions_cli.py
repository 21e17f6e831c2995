"""Retiring an old branch: which runs still answer False to c.version(change_id)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from substantial import Conductor, Context, RunStatus, workflow
from substantial.backends import FSBackend
from substantial.ops import runs_on_old_branch
from tests import version_app
from tests.harness import wait_for_status

ROOT = Path(__file__).resolve().parent.parent


@workflow(name="versioned.flow")
async def flow_v1(c: Context) -> str:
    await c.save(version_app.step_a)
    path = await c.save(version_app.step_old)
    await c.receive("go")
    return str(path)


async def test_old_runs_are_listed_until_they_finish(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path)
    async with Conductor(backend) as v1:
        v1.register(flow_v1)
        for run_id in ("old-1", "old-2"):
            await v1.start(flow_v1, run_id=run_id)
            await wait_for_status(v1.handle(run_id), RunStatus.WAITING)

    async with Conductor(backend) as v2:
        v2.register(version_app.flow)
        await v2.start(version_app.flow, run_id="new-1")
        await wait_for_status(v2.handle("new-1"), RunStatus.WAITING)
        assert await runs_on_old_branch(v2, backend, "new-step") == ["old-1", "old-2"]

        env = dict(os.environ, PYTHONPATH=str(ROOT))
        script = str(Path(sys.executable).with_name("substantial"))
        command = [script, "versions", "new-step", "--app", "tests.version_app",
                   "--backend", f"file://{tmp_path}"]  # fmt: skip
        with anyio.fail_after(60):
            listed = await anyio.run_process(command, env=env, cwd=ROOT, check=False)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.decode().split() == ["old-1", "old-2"]
        assert "2 runs on the old side of 'new-step'" in listed.stderr.decode()

        for run_id in ("old-1", "old-2", "new-1"):
            await v2.handle(run_id).send("go")
        assert await v2.handle("old-1").result(timeout=30) == "old"
        assert await v2.handle("old-2").result(timeout=30) == "old"
        assert await v2.handle("new-1").result(timeout=30) == "new"
        assert await runs_on_old_branch(v2, backend, "new-step") == []
