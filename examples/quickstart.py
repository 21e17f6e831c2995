"""
The README example, run for real on the local-files backend in a temporary folder.

    python examples/quickstart.py            # or: make demo

The workflow doubles its argument in a durable step, sleeps durably, waits for an event
"by", and multiplies. Every step is recorded under the folder it prints; kill the
process half-way and run the same code on that folder, and it carries on.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import timedelta

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend


@workflow()
async def example(c: Context, x: int) -> int:
    r = await c.save(lambda: x * 2)  # a durable step: recorded once, replayed after
    await c.sleep(timedelta(seconds=1))  # a durable timer: the run is released meanwhile
    n = await c.receive("by")  # waits for an event sent to this run
    c.log.info("multiplying %s by %s", r, n)  # silent when the log is replayed
    return r * n


async def main(folder: str) -> int:
    conductor = Conductor(FSBackend(folder))
    conductor.register(example)
    agent = conductor.run()  # the agent, as a task in this process
    handle = await conductor.start(example, 21)
    await handle.send("by", 2)
    result = await handle.result(timeout=30)
    print(f"run {handle.run_id} on {folder}: result {result}")
    for event in await handle.history():
        print(f"  segment {event.segment}  {event.at:%H:%M:%S.%f}  {event.kind}")
    agent.cancel()
    await agent
    return result


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == 84
