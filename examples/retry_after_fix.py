"""
Carrying a failed run on from where it broke, once the bug is fixed: ``retry()``.

    python examples/retry_after_fix.py [FOLDER]

``invoice`` charges a card, books the order, then fails to send the receipt (a bug).
The fix is deployed (here: the new code registered under the same workflow name), and
``retry()`` forks the failed run at its failed step: the card is not charged again (its
result is replayed from the copied log), the receipt step and what follows run with the
new code. The original run stays as it was; ``history()`` on both sides tells of the
fork. ``handle.fork(at_step=N)`` does the same at any step.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable

from substantial import Conductor, Context, RetryPolicy, RunFailed, workflow
from substantial.backends import FSBackend

calls: list[str] = []


def charge(order: str) -> Callable[[], str]:
    def charge_card() -> str:
        calls.append("charge")
        return f"charged {order}"

    return charge_card


def book(order: str) -> Callable[[], str]:
    def book_order() -> str:
        calls.append("book")
        return f"booked {order}"

    return book_order


def receipt(order: str, broken: bool) -> Callable[[], str]:
    def send_receipt() -> str:
        calls.append("receipt")
        if broken:
            raise ConnectionError("the mail server's address is wrong")
        return f"receipt for {order}"

    return send_receipt


async def _invoice(c: Context, order: str, broken: bool) -> list[str]:
    done = [await c.save(charge(order)), await c.save(book(order))]
    done.append(await c.save(receipt(order, broken), retry=RetryPolicy(max_attempts=1)))
    return done


@workflow(name="invoice")
async def invoice_v1(c: Context, order: str) -> list[str]:
    return await _invoice(c, order, broken=True)


@workflow(name="invoice")
async def invoice_v2(c: Context, order: str) -> list[str]:
    return await _invoice(c, order, broken=False)


async def main(folder: str) -> list[str]:
    async with Conductor(FSBackend(folder)) as conductor:
        conductor.register(invoice_v1)
        run = await conductor.start(invoice_v1, "o-42", run_id="invoice-o-42")
        try:
            await run.result(timeout=30)
        except RunFailed as exc:
            print(f"failed: {exc.error_message}")

        conductor.register(invoice_v2, replace=True)  # the fix is deployed
        calls.clear()
        retried = await run.retry()
        result = await retried.result(timeout=30)
        print(f"{retried.run_id}: {result}")
        print(f"steps run again: {calls}")  # the card was not charged twice
        forks = [e.details for e in await run.history() if e.kind == "forked"]
        print(f"forks of {run.run_id}: {forks}")
        assert calls == ["receipt"], calls
        return result


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        assert asyncio.run(main(folder)) == ["charged o-42", "booked o-42", "receipt for o-42"]
