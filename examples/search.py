"""
Finding runs by search attributes: ``c.set_attributes(customer="acme", region="eu")``.

    python examples/search.py [FOLDER]

Attributes are small strings and numbers, indexed on the backend
(``attrs/{name}/{value}/{run}``), so a search reads the index and the matching runs'
summaries, never every log. The same filter from the shell:
``substantial list --where customer=acme --backend file://FOLDER``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend
from substantial.ops import list_runs


@workflow(name="examples.invoice")
async def invoice(c: Context, customer: str, region: str, amount: int) -> int:
    c.set_attributes(customer=customer, region=region, amount=amount)
    return await c.save(lambda: amount * 2)


async def main(folder: str) -> None:
    backend = FSBackend(folder)
    async with Conductor(backend) as conductor:
        conductor.register(invoice)
        orders = [("acme", "eu", 10), ("acme", "us", 20), ("globex", "eu", 30)]
        for n, (customer, region, amount) in enumerate(orders):
            handle = await conductor.start(invoice, customer, region, amount, run_id=f"inv-{n}")
            await handle.result(timeout=30)
    acme = await list_runs(backend, where={"customer": "acme"})
    print("customer=acme:", [run.run_id for run in acme])
    assert [run.run_id for run in acme] == ["inv-0", "inv-1"]
    eu = await list_runs(backend, where=["customer=acme", "region=eu"])
    assert [run.run_id for run in eu] == ["inv-0"]
    print("customer=acme region=eu:", eu[0].run_id, eu[0].attributes)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else scratch))
