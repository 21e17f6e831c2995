"""
Changing workflow code under live runs with ``c.version()``.

    python examples/versioning.py [FOLDER]

Version 1 of ``greet`` is deployed and a run starts, then waits for an event. Version 2
(a new conductor, the same workflow name) changes the first step under
``if c.version("polite")``: the old run replays its log and keeps the old path
(``False``), a new run takes the new one (``True``). Each answer is recorded, so it
never flips.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable

from substantial import Conductor, Context, RunStatus, workflow
from substantial.backends import FSBackend


# Steps shared by both versions are defined once, outside the workflow functions: a step
# is recorded under its function's qualified name, so a lambda inside greet_v1 (named
# "greet_v1.<locals>.<lambda>") would not replay inside greet_v2.
def hello(name: str) -> Callable[[], str]:
    def say_hello() -> str:
        return f"hello {name}"

    return say_hello


def good_day(name: str) -> Callable[[], str]:
    def say_good_day() -> str:
        return f"good day to you, {name}"

    return say_good_day


@workflow(name="greet")
async def greet_v1(c: Context, name: str) -> str:
    greeting = await c.save(hello(name))
    await c.receive("send")
    return greeting


@workflow(name="greet")
async def greet_v2(c: Context, name: str) -> str:
    if c.version("polite"):
        greeting = await c.save(good_day(name))
    else:
        greeting = await c.save(hello(name))
    await c.receive("send")
    return greeting


async def main(folder: str) -> list[str]:
    v1 = Conductor(FSBackend(folder))
    v1.register(greet_v1)
    async with v1:
        old = await v1.start(greet_v1, "ada", run_id="old")
        while True:  # until v1 has run the first step and waits for "send"
            if await old.status() is RunStatus.WAITING:
                break
            await asyncio.sleep(0.01)
    print("v1 stopped; the old run waits for 'send'. Deploying v2.")

    v2 = Conductor(FSBackend(folder))
    v2.register(greet_v2)
    async with v2:
        new = await v2.start(greet_v2, "grace", run_id="new")
        results = []
        for handle in (v2.handle("old"), new):
            await handle.send("send")
            results.append(await handle.result(timeout=30))
            print(f"  {handle.run_id}: {results[-1]}")
    return results


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == ["hello ada", "good day to you, grace"]
