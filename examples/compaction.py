"""
A workflow that loops for ever on events, with a bounded history: each message and the
running state live in keyed slots, and compact() keeps only the newest of each.

    python examples/compaction.py [FOLDER]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend


@workflow(name="examples.tally")
async def tally(c: Context) -> dict[str, int]:
    state = {"count": 0, "sum": 0}
    while True:
        value = await c.receive("value", key="value")
        if value is None:
            return state

        async def add(state: dict[str, int] = state, value: int = value) -> dict[str, int]:
            return {"count": state["count"] + 1, "sum": state["sum"] + value}

        state = await c.save(add, key="state")
        c.compact()  # keep only the newest "value" and "state": the log stays small


async def main(folder: str) -> dict[str, int]:
    backend = FSBackend(folder)
    async with Conductor(backend) as conductor:
        conductor.register(tally)
        handle = await conductor.start(tally)
        for value in range(300):
            await handle.send("value", value)
        await handle.send("value", None)
        result: dict[str, int] = await handle.result(timeout=120)
    history = await handle.history()
    print(f"tallied {result['count']} values, sum {result['sum']}")
    print(f"the stored history holds {len(history)} events, not {2 * 300 + 3}")
    return result


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == {"count": 300, "sum": sum(range(300))}
