"""Workflows for the CLI tests, imported by a `substantial worker` subprocess."""

from __future__ import annotations

import os

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend


@workflow(name="cli.double")
async def double(c: Context, x: int) -> int:
    doubled = await c.save(lambda: x * 2)
    factor = await c.receive("factor")
    return int(doubled * factor)


conductor = Conductor(FSBackend(os.environ.get("CLI_APP_FOLDER", "./cli-app-runs")), lease=2)
conductor.register(double)
