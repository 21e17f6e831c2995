"""
Continue-as-new: a long-lived loop that starts over with a fresh log every few rounds,
so no single log grows without bound.

    python examples/continuation.py [FOLDER]

``continue_using`` ends the run (status *continued*) and starts ``{root}.{n}`` with the
given arguments; ``result()`` on the first handle waits for the end of the chain.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend

ROUNDS_PER_RUN = 3


@workflow()
async def collatz(c: Context, n: int, steps: int = 0) -> int:
    """Count the steps of the Collatz sequence from ``n``, three per run."""
    for _ in range(ROUNDS_PER_RUN):
        if n == 1:
            return steps
        n = await c.save(lambda n=n: n // 2 if n % 2 == 0 else 3 * n + 1)  # type: ignore[misc]
        steps += 1
    await c.continue_using(collatz, n, steps)


async def main(folder: str) -> int:
    conductor = Conductor(FSBackend(folder))
    conductor.register(collatz)
    async with conductor:
        handle = await conductor.start(collatz, 27, run_id="collatz-27")
        steps = await handle.result(timeout=60)
        print(f"collatz(27) reaches 1 after {steps} steps")
        run_id: str | None = handle.run_id
        while run_id:
            history = await conductor.handle(run_id).history()
            last = history[-1]
            print(f"  {run_id}: {len(history)} events, then {last.kind}")
            run_id = last.details.get("run_id") if last.kind == "continued_as" else None
    return steps


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == 111
