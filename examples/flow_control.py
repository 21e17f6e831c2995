"""
Flow control: queues, concurrency, step limits, priorities, pause and cron schedules.

    python examples/flow_control.py [FOLDER]

* ``@workflow(queue="billing", concurrency=2)``: agents serve the queues of the workflows
  they know, and at most two billing runs execute at once; the rest are ``queued``.
* ``set_limit("api", concurrency=1, rate=5, per=1s)`` and ``c.save(fn, limit="api")``:
  steps of every run share one limit, waited for durably.
* ``start(..., priority=9)``: of the runs due at once, higher first.
* ``handle.pause()`` / ``resume()``: a paused run keeps taking events, runs no code.
* ``conductor.schedule(..., cron=...)``: one run per tick, whatever the number of agents.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import timedelta

import anyio

from substantial import Conductor, Context, RunStatus, workflow
from substantial.backends import FSBackend


@workflow(name="example.invoice", queue="billing", concurrency=2)
async def invoice(c: Context, customer: str) -> str:
    total = await c.save(lambda: len(customer) * 10, limit="api")
    return f"{customer}: {total}"


@workflow(name="example.report")
async def report(c: Context, title: str) -> str:
    approved = await c.receive("approve")
    return f"{title} ({approved})"


async def main(folder: str) -> None:
    async with Conductor(FSBackend(folder)) as conductor:
        conductor.register(invoice, report)
        print("serving queues", conductor.queues)
        await conductor.set_limit("api", concurrency=1, rate=5, per=timedelta(seconds=1))

        handles = [await conductor.start(invoice, name) for name in ("ada", "bob", "cy")]
        urgent = await conductor.start(invoice, "dee", priority=9)
        print(await urgent.result(), *[await h.result() for h in handles], sep="\n")

        monthly = await conductor.start(report, "monthly")
        await monthly.pause()
        while await monthly.status() is not RunStatus.PAUSED:  # noqa: ASYNC110 - another process's view
            await anyio.sleep(0.05)
        await monthly.send("approve", "ok")  # kept in its inbox while paused
        print("report is", (await monthly.status()).value)
        await monthly.resume()
        print(await monthly.result())

        schedule = await conductor.schedule(
            "nightly", report, "nightly", cron="0 3 * * *", timezone="Europe/Zurich"
        )
        info = await schedule.describe(ticks=2)
        print("nightly report at", *[tick.isoformat() for tick in info.next_ticks])
        await schedule.delete()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
