"""
Workflows whose recorded logs are committed under tests/golden/. Their names and code
are frozen: changing them must be a deliberate act (re-record with
`python -m tests.golden_workflows`), because old logs in the wild must keep replaying.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from substantial import (
    Conductor,
    Context,
    Handle,
    RetryPolicy,
    RunCancelled,
    StepFailed,
    workflow,
)
from substantial.backends import MemoryBackend

GOLDEN = Path(__file__).with_name("golden")


@workflow(name="golden.order")
async def order(c: Context, order_id: str, amount: int) -> dict[str, Any]:
    charged = await c.save(lambda: {"order": order_id, "charged": amount})
    seen: list[str] = []
    c.handle("note", seen.append)
    await c.sleep(0.01)
    address = await c.receive("address")
    shipped = await asyncio.gather(
        c.save(lambda: f"box-1:{address}"), c.save(lambda: f"box-2:{address}")
    )
    await c.ensure(lambda: len(seen) >= 2)
    return {"charged": charged, "shipped": list(shipped), "notes": seen, "token": str(c.uuid4())}


_flaky_calls = {"n": 0}


def _flaky() -> str:
    _flaky_calls["n"] += 1
    if _flaky_calls["n"] < 2:
        raise ConnectionError("flaky service")
    return "ok"


@workflow(name="golden.retry")
async def retry(c: Context) -> str:
    first = await c.save(_flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
    try:
        await c.save(_always_fails)
    except StepFailed as exc:
        return f"{first}; then {exc.type_name}: {exc.error_message}"
    return "unreachable"


def _always_fails() -> None:
    raise ValueError("no stock")


@workflow(name="golden.cancel")
async def cancel(c: Context) -> str:
    try:
        await c.receive("never")
    finally:
        await c.save(lambda: "cleaned up")
    return "unreachable"


WORKFLOWS = [order, retry, cancel]


async def _record_one(
    conductor: Conductor, name: str, start: Callable[[], Awaitable[Handle[Any]]],
    drive: Callable[[Handle[Any]], Awaitable[None]],
) -> None:  # fmt: skip
    handle = await start()
    await drive(handle)
    with contextlib.suppress(RunCancelled):  # the cancel log ends cancelled
        await handle.result(timeout=10)
    stored = await conductor.store.read_log(handle.run_id)
    folder = GOLDEN / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    keys = await conductor.backend.list_all(f"runs/{handle.run_id}/log/")
    for seq, key in enumerate(keys):
        entry = await conductor.backend.get(key)
        assert entry is not None
        (folder / f"{seq:06d}.segment").write_bytes(entry[0])
    print(f"recorded {name}: {len(stored.events)} events in {len(keys)} segments")


async def record() -> None:
    async with Conductor(MemoryBackend()) as conductor:
        conductor.register(*WORKFLOWS)

        async def order_events(h: Handle[Any]) -> None:
            await h.send("note", "fragile")
            await h.send("address", "1 Main St")
            await h.send("note", "leave at door")

        async def cancel_it(h: Handle[Any]) -> None:
            await h.cancel()

        async def nothing(h: Handle[Any]) -> None:
            return None

        await _record_one(
            conductor, "order", lambda: conductor.start(order, "o-1", 42, run_id="golden-order"),
            order_events,
        )  # fmt: skip
        await _record_one(
            conductor, "retry", lambda: conductor.start(retry, run_id="golden-retry"), nothing
        )
        await _record_one(
            conductor, "cancel", lambda: conductor.start(cancel, run_id="golden-cancel"), cancel_it
        )


if __name__ == "__main__":
    asyncio.run(record())
