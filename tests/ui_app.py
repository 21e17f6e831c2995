"""
An agent process for the web view's tests (``tests/test_ui_browser.py``): workflows that
wait for an event, run steps in parallel, retry, sleep and start a child, and one whose
names and values are hostile HTML.

    python tests/ui_app.py BACKEND_URL

Prints ``ready`` on stdout once it serves; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from substantial import Conductor, Context, RetryPolicy, workflow

HOSTILE = "<script>alert('x')</script>"

_attempts: Counter[str] = Counter()


@workflow(name="approval")
async def approval(c: Context, order: str) -> dict[str, Any]:
    """Checks an order, then waits for someone to send ``approve``."""
    c.set_status({"stage": "awaiting approval"})
    checked = await c.save(lambda: f"checked {order}")
    decision = await c.receive("approve")
    c.set_status({"stage": "approved"})
    return {"order": order, "decision": decision, "checked": checked}


# Steps that take a while, so their bars have a length. They end in the reverse of the
# order the gather reached them, far apart: the log records when a step ended, not when
# it began, and only an end that comes before an earlier position's end shows that they
# ran side by side (substantial/_ui/timeline.py); close ends swapped under load.
def load_orders() -> int:
    time.sleep(0.9)
    return 1


def load_stock() -> int:
    time.sleep(0.5)
    return 2


def load_prices() -> int:
    time.sleep(0.1)
    return 3


@workflow(name="double")
async def double(c: Context, n: int) -> int:
    return await c.save(lambda: n * 2)


@workflow(name="pipeline")
async def pipeline(c: Context, n: int) -> int:
    """Three steps at once, a flaky step retried twice, a durable sleep and a child."""
    parts = await asyncio.gather(c.save(load_orders), c.save(load_stock), c.save(load_prices))

    this_run = str(c.uuid4())  # the same on every replay, new for every run (unlike its id)

    def call_supplier() -> int:
        _attempts[this_run] += 1
        if _attempts[this_run] < 3:
            raise ConnectionError(f"upstream busy (attempt {_attempts[this_run]})")
        return n

    retry = RetryPolicy(max_attempts=4, initial_interval=0.2, backoff_coefficient=1.0)
    got = await c.save(call_supplier, retry=retry)
    await c.sleep(0.4)
    doubled = await c.child(double, got)
    return sum(parts) + doubled


@workflow(name="charge")
async def charge(c: Context, amount: int) -> str:
    """Fails when the card is declined (over 100): a failed run with a traceback."""

    def authorise() -> str:
        if amount > 100:
            raise ValueError(f"card declined for {amount}")
        return f"authorised {amount}"

    return await c.save(authorise)


@workflow(name="reminder")
async def reminder(c: Context, hours: int) -> str:
    """Sleeps for hours: a sleeping run with a wake time."""
    await c.sleep(hours * 3600)
    return "reminded"


@workflow(name="countdown")
async def countdown(c: Context, n: int) -> str:
    """Continues as a new run until ``n`` reaches 0: a ``continue_using`` chain."""
    await c.save(lambda: n)
    if n > 0:
        await c.continue_using(countdown, n - 1)
    return "lift-off"


@workflow(name=f"hostile{HOSTILE}")
async def hostile(c: Context, text: str) -> str:
    """Names, statuses and values that are HTML: the view must show them as text."""
    c.set_status(HOSTILE)
    await c.save(lambda: HOSTILE, key=HOSTILE)
    return str(await c.receive(HOSTILE)) + text


def build(url: str) -> Conductor:
    conductor = Conductor(url, poll_interval=0.05, lease=3.0)
    conductor.register(approval, double, pipeline, charge, reminder, countdown, hostile)
    return conductor


if __name__ == "__main__":
    from agent_process import run_agent  # a sibling: the app runs as a script

    run_agent(build)
