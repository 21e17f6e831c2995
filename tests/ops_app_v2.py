"""`tests.ops_app` after a careless deploy: `ops.wait` now sleeps before its first step."""

from __future__ import annotations

from substantial import Context, workflow


@workflow(name="ops.greet")
async def greet(c: Context, name: str) -> str:
    return str(await c.save(lambda: f"hello {name}"))


@workflow(name="ops.wait")
async def wait(c: Context, x: int) -> int:
    await c.sleep(1)
    doubled = await c.save(lambda: x * 2)
    factor = await c.receive("factor")
    return int(doubled * factor)
