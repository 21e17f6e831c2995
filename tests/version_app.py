"""Version 2 of a workflow for the versioning tests: a changed step under c.version."""

from __future__ import annotations

from substantial import Context, workflow


def step_a() -> str:
    return "a"


def step_old() -> str:
    return "old"


def step_new() -> str:
    return "new"


@workflow(name="versioned.flow")
async def flow(c: Context) -> str:
    await c.save(step_a)
    if c.version("new-step"):
        path = await c.save(step_new)
    else:
        path = await c.save(step_old)
    await c.receive("go")
    return str(path)
