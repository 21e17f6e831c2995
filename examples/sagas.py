"""
A saga: a transfer across three accounts that fails on its third step and undoes the
first two with their compensations, newest first.

    python examples/sagas.py [FOLDER]

Each compensation is a durable step: recorded once, and a crash in the middle of the
revert resumes it where it stopped. The run ends *reverted*: ``RunReverted`` from
``result()``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable

from substantial import Conductor, Context, RunReverted, StepFailed, workflow
from substantial.backends import FSBackend

accounts = {"alice": 100, "bob": 0, "carol": 0}


def move(src: str, dst: str, amount: int) -> Callable[[], dict[str, int]]:
    def step() -> dict[str, int]:
        if dst not in accounts:
            raise LookupError(f"no account {dst!r}")
        accounts[src] -= amount
        accounts[dst] += amount
        return dict(accounts)

    return step


@workflow()
async def transfer(c: Context) -> str:
    try:
        await c.save(move("alice", "bob", 30), compensate_with=move("bob", "alice", 30))
        await c.save(move("bob", "carol", 20), compensate_with=move("carol", "bob", 20))
        await c.save(move("carol", "dave", 5), compensate_with=move("dave", "carol", 5))
    except StepFailed as exc:
        c.log.warning("reverting: %s", exc)
        await c.revert()  # undo bob -> carol, then alice -> bob
    return "transferred"


async def main(folder: str) -> dict[str, int]:
    conductor = Conductor(FSBackend(folder))
    conductor.register(transfer)
    async with conductor:
        handle = await conductor.start(transfer)
        try:
            await handle.result(timeout=30)
        except RunReverted:
            print(f"run {handle.run_id}: {(await handle.status()).value}")
        for event in await handle.history():
            if event.kind == "step_completed":
                print(f"  step {event.details['position']}: {event.details.get('result')}")
    print(f"balances: {accounts}")
    return accounts


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == {"alice": 100, "bob": 0, "carol": 0}
