"""
Publishing progress with ``c.set_status()`` and reading it with ``handle.query()``.

    python examples/status.py [FOLDER]

The value is kept in the run's summary after each wake-up, so ``query()`` reads it from
any process without replaying anything, and returns ``None`` before the first one.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend


@workflow()
async def import_files(c: Context, files: list[str]) -> int:
    await c.receive("start")
    for done, name in enumerate(files, 1):
        await c.save(lambda name=name: len(name))  # type: ignore[misc]
        c.set_status({"done": done, "of": len(files), "last": name})
        await c.receive("next")
    return len(files)


async def main(folder: str) -> list[object]:
    conductor = Conductor(FSBackend(folder))
    conductor.register(import_files)
    seen: list[object] = []
    async with conductor:
        files = ["a.csv", "b.csv", "c.csv"]
        handle = await conductor.start(import_files, files)
        seen.append(await handle.query())  # None: nothing published yet
        await handle.send("start")
        for _ in files:
            while True:  # until the run publishes a new value
                status = await handle.query()
                if status not in seen:
                    break
                await asyncio.sleep(0.01)
            print(f"progress: {status}")
            seen.append(status)
            await handle.send("next")
        assert await handle.result(timeout=30) == len(files)
    return seen


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == [
            None,
            {"done": 1, "of": 3, "last": "a.csv"},
            {"done": 2, "of": 3, "last": "b.csv"},
            {"done": 3, "of": 3, "last": "c.csv"},
        ]
