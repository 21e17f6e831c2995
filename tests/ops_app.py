"""Workflows for the operator-command tests (`substantial list/show/replay/...`)."""

from __future__ import annotations

from substantial import Context, workflow


@workflow(name="ops.greet")
async def greet(c: Context, name: str) -> str:
    greeting = str(await c.save(lambda: f"hello {name}"))
    c.log.info("greeted %s", name)
    return greeting


@workflow(name="ops.wait")
async def wait(c: Context, x: int) -> int:
    doubled = await c.save(lambda: x * 2)
    factor = await c.receive("factor")
    return int(doubled * factor)


@workflow(name="ops.boom")
async def boom(c: Context) -> None:
    await c.save(lambda: 1)
    raise ValueError("boom")
