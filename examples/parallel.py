"""
Parallel steps inside one run, with ``asyncio.gather``, and try/except/finally with
durable steps in each part.

    python examples/parallel.py [FOLDER]

The three fetches run at the same time (the whole takes about one fetch, not three);
their results are recorded as they arrive and replay to the same values in later
wake-ups. The finally step runs even though a step failed, and is recorded once.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from substantial import Conductor, Context, StepFailed, workflow
from substantial.backends import FSBackend


async def fetch(source: str) -> str:
    await asyncio.sleep(0.3)  # a slow call; inside a step, real time is fine
    if source == "flaky":
        raise ConnectionError(f"{source} is down")
    return f"data from {source}"


@workflow()
async def report(c: Context) -> dict[str, object]:
    started = c.now()
    try:
        results = await asyncio.gather(
            c.save(lambda: fetch("east")),
            c.save(lambda: fetch("west")),
            c.save(lambda: fetch("flaky")),
            return_exceptions=True,
        )
        fetched = [r for r in results if isinstance(r, str)]
        failed = [r.error_message for r in results if isinstance(r, StepFailed)]
        if failed:
            fetched.append(await c.save(lambda: "data from the cache"))  # the rescue
    finally:
        await c.save(lambda: print("cleaning up, once"))
    await c.sleep(0.1)  # what follows runs in a later wake-up: the gather is replayed
    took = (c.now() - started).total_seconds()  # run time: about one fetch, not three
    return {"fetched": fetched, "failed": failed, "seconds": round(took, 2)}


async def main(folder: str) -> dict[str, object]:
    conductor = Conductor(FSBackend(folder))
    conductor.register(report)
    async with conductor:
        clock = time.monotonic()
        handle = await conductor.start(report)
        result = await handle.result(timeout=30)
        print(f"{result} in {time.monotonic() - clock:.2f}s")
    return result


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        result = asyncio.run(main(folder))
        assert result["fetched"] == ["data from east", "data from west", "data from the cache"]
        assert result["failed"] == ["flaky is down"]
