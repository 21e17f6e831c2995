"""A payload over the limit is refused where it is encoded, before anything is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from substantial import (
    CodecError,
    Conductor,
    Context,
    RetryPolicy,
    RunFailed,
    RunNotFound,
    workflow,
)
from substantial._core.constants import MAX_PAYLOAD_BYTES
from substantial._store.keys import inbox_prefix
from substantial.backends import Backend
from tests.conftest import open_test_backend
from tests.test_workflows import WAIT, Counter

LIMIT = 1000
BIG = "x" * 2000  # 2,002 bytes encoded


def over(what: str, size: int = 2002) -> str:
    return (
        f"cannot encode {what}: its {size:,} bytes are over the payload limit of {LIMIT:,} "
        "bytes (raise it with Conductor(max_payload=...))"
    )


@pytest.fixture(params=["memory", "files"])
async def small(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Conductor]:
    """A running conductor with a 1,000-byte payload limit (the check is backend-free)."""
    backend = await open_test_backend(request.param, request, tmp_path)
    try:
        async with Conductor(backend, max_payload=LIMIT, poll_interval=0.1) as conductor:
            yield conductor
    finally:
        await backend.aclose()


async def all_keys(backend: Backend) -> list[str]:
    return list(await backend.list(""))


@workflow(name="limit.waits")
async def waits(c: Context, value: Any) -> Any:
    return await c.receive("go")


def test_default_limit_is_64_mib() -> None:
    assert MAX_PAYLOAD_BYTES == 64 * 1024 * 1024
    assert Conductor("memory://").max_payload == MAX_PAYLOAD_BYTES
    with pytest.raises(ValueError, match="max_payload must be at least 1 byte"):
        Conductor("memory://", max_payload=0)


async def test_start_and_send_over_the_limit_write_nothing(backend: Backend) -> None:
    async with Conductor(backend, max_payload=LIMIT, poll_interval=0.1) as conductor:
        conductor.register(waits)
        with pytest.raises(CodecError) as info:
            await conductor.start(waits, BIG, run_id="too-big")
        assert str(info.value) == over("args", 2009)  # [["xx..."],{}]
        assert await all_keys(backend) == []
        with pytest.raises(RunNotFound):
            await conductor.handle("too-big").status()

        handle = await conductor.start(waits, "small")
        with pytest.raises(CodecError) as info:
            await handle.send("go", BIG)
        assert str(info.value) == over("event 'go'")
        assert await backend.list(inbox_prefix(handle.run_id)) == []
        await handle.send("go", "x" * (LIMIT - 2))  # exactly at the limit: accepted
        assert await handle.result(timeout=WAIT) == "x" * (LIMIT - 2)


async def test_step_result_over_the_limit_fails_the_step_without_retry(
    small: Conductor,
) -> None:
    counter = Counter()

    def big() -> str:
        counter.hit("big")
        return BIG

    @workflow(name="limit.step")
    async def step(c: Context) -> str:
        try:
            await c.save(big, retry=RetryPolicy(max_attempts=3, initial_interval=0))
        except CodecError as exc:
            return str(exc)
        return "not raised"

    small.register(step)
    handle = await small.start(step)
    assert await handle.result(timeout=WAIT) == over(f"the result of step 0 ({big.__qualname__})")
    assert counter["big"] == 1  # not retried: the same value would be too big again
    assert [e.kind for e in await handle.history()] == ["started", "step_completed", "completed"]


async def test_run_result_over_the_limit_fails_the_run(small: Conductor) -> None:
    @workflow(name="limit.result")
    async def returns_big(c: Context) -> str:
        return BIG

    small.register(returns_big)
    handle = await small.start(returns_big)
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=WAIT)
    assert info.value.type_name == "substantial.errors.CodecError"
    assert info.value.error_message == over("result")


async def test_child_continue_and_status_over_the_limit_raise_in_the_workflow(
    small: Conductor,
) -> None:
    @workflow(name="limit.doors")
    async def doors(c: Context) -> list[str]:
        errors = []
        for door in (
            lambda: c.child(waits, BIG),
            lambda: c.start_child(waits, BIG),
            lambda: c.continue_using(waits, BIG),
        ):
            try:
                await door()
            except CodecError as exc:
                errors.append(str(exc))
        try:
            c.set_status(BIG)
        except CodecError as exc:
            errors.append(str(exc))
        c.set_status("small")
        return errors

    small.register(doors, waits)
    handle = await small.start(doors)
    args = over("args", 2009)
    assert await handle.result(timeout=WAIT) == [args, args, args, over("status")]
    assert await handle.query() == "small"
    assert [e.kind for e in await handle.history()] == ["started", "completed"]
