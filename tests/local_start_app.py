"""
A process that serves an agent (``chaos_app``'s) and starts one ``chaos.gate`` run, which
its own agent takes at the start; it prints the run's lease holder and this agent's
name, then serves on until it is killed (``tests/test_local_start.py``).

python tests/local_start_app.py BACKEND_URL RUN_ID
"""

from __future__ import annotations

import sys

import anyio
import chaos_app  # a sibling: this file runs as a script

from substantial._core.notify import Notifier


async def main(url: str, run_id: str) -> None:
    conductor = chaos_app.build(url)
    async with conductor:
        while "default" not in conductor._poller._seen:  # its first poll: it knows the queue
            await Notifier().wait_kick(0.01)
        await conductor.start(chaos_app.gate, run_id=run_id)
        holder = await conductor.store.lease_holder(run_id)
        print(holder.owner if holder else "-", conductor.name, flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
