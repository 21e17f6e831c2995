"""
Group commit on Redis, against a real redis-server: commands issued in one event-loop tick
go out as one pipeline, and batching changes nothing a caller can see. Each script stays
atomic (of many creates of one key exactly one wins), each caller gets its own reply or
its own exception, and a cancelled caller leaves the connection in step for the others.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from substantial.backends.redis import RedisBackend
from substantial.errors import BackendError, BackendUnavailable
from tests.harness import wait_until
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("anyio_backend")]


def _v(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")
    try:
        yield backend
    finally:
        await backend.aclose()


async def _together(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Start every call in the same tick; each one's result, or the exception it raised."""
    results: list[Any] = [None] * len(calls)

    async def one(index: int) -> None:
        try:
            results[index] = await calls[index]()
        except Exception as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(one, index)
    return results


async def _evalsha_calls(admin: aioredis.Redis) -> int:
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_creates_of_one_key_in_one_pipeline_have_one_winner(
    store: RedisBackend, admin: aioredis.Redis
) -> None:
    await store.put("warm", b"x")  # scripts loaded, a connection open
    await admin.config_resetstat()
    pipelines = store._batch.pipelines
    payloads = [f"writer {index}".encode() for index in range(100)]
    results = await _together([lambda p=p: store.create("k", p) for p in payloads])
    assert store._batch.pipelines == pipelines + 1  # one round trip for the 100 creates
    assert await _evalsha_calls(admin) == 100  # each create ran, as its own script
    winners = [index for index, result in enumerate(results) if result is not None]
    assert len(winners) == 1
    winner = payloads[winners[0]]
    assert results[winners[0]] == _v(winner)
    assert await store.get("k") == (winner, _v(winner))
    assert await store.list("") == ["k", "warm"]


async def test_two_clients_racing_on_one_key_have_one_winner(redis_server: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    async with (
        RedisBackend(redis_server.url, prefix=prefix) as one,
        RedisBackend(redis_server.url, prefix=prefix) as two,
    ):
        for round_ in range(20):
            key = f"segment/{round_}"
            calls = [
                lambda b=backend, i=index, k=key: b.create(k, f"{id(b)}-{i}".encode())
                for index in range(25)
                for backend in (one, two)
            ]
            results = await _together(calls)
            assert sum(result is not None for result in results) == 1


async def test_each_caller_gets_its_own_result_in_a_mixed_batch(store: RedisBackend) -> None:
    old = await store.create("cas", b"old")
    assert old is not None
    await store.put("doomed", b"d")
    await store.put("kept", b"k")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.replace("cas", b"stale", _v(b"not the version")),
        lambda: store.replace("cas", b"new", old),
        lambda: store.delete("kept", _v(b"not the version")),
        lambda: store.delete("doomed", _v(b"d")),
        lambda: store.create("fresh", b"f"),
        lambda: store.get("kept"),
        lambda: store.get_many(["kept", "absent"]),
        lambda: store.list("k"),
    ]
    pipelines = store._batch.pipelines
    results = await _together(calls)
    assert store._batch.pipelines == pipelines + 1
    assert results == [
        None,
        _v(b"new"),
        False,
        True,
        _v(b"f"),
        (b"k", _v(b"k")),
        [(b"k", _v(b"k")), None],
        ["kept"],
    ]
    assert await store.list("") == ["cas", "fresh", "kept"]


async def test_an_error_reply_fails_only_its_own_caller(
    store: RedisBackend, admin: aioredis.Redis
) -> None:
    await store.put("good", b"g")
    await admin.hset(f"{store.prefix}:k:hash", "field", "value")  # GET on it: WRONGTYPE
    results = await _together(
        [lambda: store.get("hash"), lambda: store.get("good"), lambda: store.create("n", b"1")]
    )
    assert isinstance(results[0], BackendError)
    assert "WRONGTYPE" in str(results[0])
    assert results[1:] == [(b"g", _v(b"g")), _v(b"1")]


async def test_script_flush_under_a_batch_reloads_once_and_every_write_runs(
    store: RedisBackend, admin: aioredis.Redis
) -> None:
    await store.put("warm", b"x")
    await admin.script_flush()
    pipelines = store._batch.pipelines
    results = await _together([lambda i=i: store.create(f"k{i}", b"v") for i in range(30)])
    assert results == [_v(b"v")] * 30
    assert store._batch.pipelines == pipelines + 2  # NOSCRIPT, then load + the 30 again
    assert len(await store.list("k")) == 30


async def test_cancelled_caller_leaves_the_others_and_the_connection_in_step(
    store: RedisBackend,
) -> None:
    await store.put("warm", b"x")
    results: dict[int, Any] = {}

    async def create(index: int) -> None:
        results[index] = await store.create(f"k{index}", f"v{index}".encode())

    async with anyio.create_task_group() as tg:
        for index in range(20):
            tg.start_soon(create, index)
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(create, 99)
            await anyio.lowlevel.checkpoint()  # queued in a batch; then its caller goes away
            doomed.cancel_scope.cancel()
    assert results == {index: _v(f"v{index}".encode()) for index in range(20)}
    # The cancelled create's command still went out with its batch; replies stay matched.
    for index in range(20):
        assert await store.get(f"k{index}") == (f"v{index}".encode(), _v(f"v{index}".encode()))


async def test_connection_killed_under_a_batch_gives_each_caller_its_own_exception(
    store: RedisBackend, admin: aioredis.Redis
) -> None:
    await store.put("warm", b"x")
    await admin.client_kill_filter(_type="normal", skipme=True)
    results = await _together([lambda i=i: store.put(f"k{i}", b"v") for i in range(10)])
    failures = [result for result in results if isinstance(result, Exception)]
    assert all(isinstance(exc, BackendUnavailable) for exc in failures)
    assert len({id(exc) for exc in failures}) == len(failures)
    assert len({id(exc.__cause__) for exc in failures}) == len(failures)
    # Afterwards every write works again (the dead connection is replaced).
    assert (
        await _together([lambda i=i: store.put(f"k{i}", b"w") for i in range(10)])
        == [_v(b"w")] * 10
    )


async def test_aclose_fails_the_commands_in_flight_at_once(redis_server: RedisServer) -> None:
    store = RedisBackend(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")
    await store.put("warm", b"x")
    outcome: list[BaseException] = []

    async def stuck() -> None:
        try:
            await store.get("warm")
        except BackendUnavailable as exc:
            outcome.append(exc)

    redis_server.pause()  # the command goes out and gets no reply (socket timeout: 10 s)
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                pipelines = store._batch.pipelines
                tg.start_soon(stuck)
                await wait_until(lambda: store._batch.pipelines > pipelines, 5, "the send")
                await store.aclose()
    finally:
        redis_server.resume()
    assert len(outcome) == 1
