"""
Timeouts and cancellation.

    python examples/timeouts.py [FOLDER]

* ``c.receive(name, timeout=)`` raises ``TimeoutError`` at the deadline; the deadline is
  a durable timer, so it holds across agent restarts.
* ``c.save(fn, timeout=)`` bounds one attempt of a step.
* ``handle.cancel()`` raises ``asyncio.CancelledError`` in the workflow where it waits;
  its ``finally`` steps run durably, then the run ends *cancelled*.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from substantial import Conductor, Context, RetryPolicy, RunCancelled, workflow
from substantial.backends import FSBackend

attempts = 0


async def sometimes_slow() -> str:
    global attempts
    attempts += 1
    if attempts == 1:
        await asyncio.sleep(60)  # the first attempt hangs; its timeout ends it
    return f"answered on attempt {attempts}"


@workflow()
async def approval(c: Context) -> str:
    try:
        return str(await c.receive("approve", timeout=0.5))
    except TimeoutError:
        return "no approval in time: " + await c.save(
            sometimes_slow, timeout=0.3, retry=RetryPolicy(initial_interval=0.1)
        )


@workflow()
async def subscription(c: Context) -> None:
    try:
        while True:
            await c.receive("renew")
    finally:
        await c.save(lambda: print("subscription closed, once"))


async def main(folder: str) -> list[str]:
    conductor = Conductor(FSBackend(folder))
    conductor.register(approval, subscription)
    outcomes = []
    async with conductor:
        early = await conductor.start(approval)
        await early.send("approve", "approved")
        late = await conductor.start(approval)
        outcomes += [await early.result(timeout=30), await late.result(timeout=30)]

        sub = await conductor.start(subscription)
        await sub.send("renew")
        await sub.cancel()  # raised in the workflow at whichever receive it waits on
        try:
            await sub.result(timeout=30)
        except RunCancelled:
            outcomes.append((await sub.status()).value)
    for outcome in outcomes:
        print(outcome)
    return outcomes


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == [
            "approved",
            "no approval in time: answered on attempt 2",
            "cancelled",
        ]
