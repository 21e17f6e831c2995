"""RedisBackend on a real redis-server: scripts, index, outages, and ``from_url``."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from substantial.backends import FSBackend, MemoryBackend, from_url
from substantial.backends.redis import RedisBackend
from substantial.errors import BackendUnavailable
from tests.harness import wait_until
from tests.servers import RedisServer, running_redis

# Naming anyio_backend keeps anyio's plugin from duplicating each test per event loop.
pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("anyio_backend")]


def _backend(redis_server: RedisServer, **options: Any) -> RedisBackend:
    return RedisBackend(redis_server.url, prefix=f"test-{uuid.uuid4().hex}", **options)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
    backend = _backend(redis_server)
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_layout_and_versions_are_what_any_client_can_compute(
    store: RedisBackend, admin: aioredis.Redis
) -> None:
    version = await store.create("runs/r1/meta", b"hello")
    assert version == hashlib.sha1(b"hello").hexdigest()
    assert await admin.get(f"{store.prefix}:k:runs/r1/meta") == b"hello"
    assert await admin.zrange(f"{store.prefix}:keys", 0, -1, withscores=True) == [
        (f"{store.prefix}:k:runs/r1/meta".encode(), 0.0)
    ]
    # A version computed by another client is accepted by replace.
    await admin.set(f"{store.prefix}:k:runs/r1/meta", b"changed elsewhere")
    assert await store.replace("runs/r1/meta", b"x", version) is None
    assert await store.replace("runs/r1/meta", b"x", hashlib.sha1(b"changed elsewhere").hexdigest())
    assert await store.delete("runs/r1/meta", hashlib.sha1(b"x").hexdigest())
    assert await admin.zcard(f"{store.prefix}:keys") == 0


async def test_get_many_is_one_mget(store: RedisBackend) -> None:
    await store.put("a", b"1")
    await store.put("c", b"3")
    store.requests.clear()
    entries = await store.get_many(["a", "b", "c"])
    assert entries == [(b"1", hashlib.sha1(b"1").hexdigest()), None, (b"3", store_v(b"3"))]
    assert store.requests == {"get_many": 1}
    assert await store.get_many([]) == []


def store_v(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


async def test_namespaces_do_not_see_each_other(redis_server: RedisServer) -> None:
    async with _backend(redis_server) as one, _backend(redis_server) as two:
        await one.put("k", b"1")
        assert await two.get("k") is None
        assert await two.list("") == []
        assert await one.list("") == ["k"]


async def test_scripts_survive_script_flush(store: RedisBackend, admin: aioredis.Redis) -> None:
    version = await store.create("k", b"1")
    assert version is not None
    await admin.script_flush()
    assert await store.create("k2", b"2")
    await admin.script_flush()
    version = await store.replace("k", b"3", version)
    assert version == store_v(b"3")
    await admin.script_flush()
    assert await store.put("k4", b"4") == store_v(b"4")
    await admin.script_flush()
    assert await store.delete("k", version)
    assert await store.list("") == ["k2", "k4"]


async def test_listing_never_uses_keys_or_scan(store: RedisBackend, admin: aioredis.Redis) -> None:
    for index in range(30):
        await store.put(f"schedule/{index:04d}", b"x")
    await admin.config_resetstat()
    assert len(await store.list("schedule/", limit=10)) == 10
    assert len(await store.list("schedule/", after="schedule/0010", limit=5)) == 5
    assert len(await store.list_all("")) == 30
    stats = await admin.info("commandstats")
    assert "cmdstat_zrangebylex" in stats
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats)


async def test_client_kill_mid_use_gives_success_or_unavailable(
    store: RedisBackend, admin: aioredis.Redis
) -> None:
    done_before = anyio.Event()
    counts = {"ok": 0}
    unexpected: list[BaseException] = []
    unavailable: list[BackendUnavailable] = []

    async def worker(name: str) -> None:
        for index in range(400):
            try:
                key = f"{name}/{index:04d}"
                await store.create(key, b"v" * 200)
                await store.get(key)
                await store.list(f"{name}/", limit=5)
                counts["ok"] += 1
            except BackendUnavailable as exc:
                unavailable.append(exc)
            except Exception as exc:  # anything else is a bug
                unexpected.append(exc)
            if counts["ok"] >= 100:
                done_before.set()

    async with anyio.create_task_group() as tg:
        for name in "abcdefgh":
            tg.start_soon(worker, name)
        await done_before.wait()
        for _ in range(3):
            await admin.client_kill_filter(_type="normal", skipme=True)
            await anyio.lowlevel.checkpoint()
    assert unexpected == []
    for exc in unavailable:
        assert exc.backend == "redis"
        assert isinstance(exc.__cause__, Exception)
    # The pool reconnects: the next operations work.
    assert await store.put("after/kill", b"x") == store_v(b"x")
    assert await store.get("after/kill") == (b"x", store_v(b"x"))


async def test_paused_server_gives_unavailable_then_recovers(
    redis_server: RedisServer,
) -> None:
    async with _backend(redis_server, socket_timeout=0.5) as store:
        await store.put("k", b"before")
        redis_server.pause()
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await store.create("k2", b"x")
            assert caught.value.operation == "create"
            with pytest.raises(BackendUnavailable):
                await store.get("k")
        finally:
            redis_server.resume()
        assert await store.get("k") == (b"before", store_v(b"before"))
        # Whatever the timed-out create did, the key is now either there or absent.
        assert await store.create("k3", b"y") == store_v(b"y")


async def test_server_restart_reconnects_and_reloads_scripts(
    redis_server: RedisServer,
) -> None:
    async with _backend(redis_server) as store:
        assert await store.create("k", b"1")
        # Blocking the event loop here is the worst case: the pooled connection's EOF is
        # not noticed before the next command, which must still work (reads retry once).
        redis_server.restart()  # no persistence: data and scripts are gone
        assert await store.get("k") is None
        assert await store.create("k", b"2") == store_v(b"2")
        assert await store.list("") == ["k"]
        # A write on a connection that died unnoticed is not repeated (it may have reached
        # the server): it either works or says the backend was unavailable.
        redis_server.restart()
        try:
            outcome = await store.put("k", b"3")
        except BackendUnavailable as exc:
            outcome = exc.operation
        assert outcome in (store_v(b"3"), "put")
        assert await store.create("k", b"4") == store_v(b"4")


async def test_unreachable_server_gives_unavailable() -> None:
    from tests.servers import free_port

    async with RedisBackend(f"redis://127.0.0.1:{free_port()}/0") as store:
        with pytest.raises(BackendUnavailable) as caught:
            await store.get("k")
        assert caught.value.backend == "redis"
        assert caught.value.__cause__ is not None


async def test_aclose_twice(redis_server: RedisServer) -> None:
    store = _backend(redis_server)
    await store.put("k", b"1")
    await store.aclose()
    await store.aclose()


# --- from_url ---------------------------------------------------------------------------


async def test_from_url_redis() -> None:
    store = from_url("redis://127.0.0.1:6390/2?prefix=myapp&socket_timeout=3")
    try:
        assert isinstance(store, RedisBackend)
        assert store.prefix == "myapp"
        kwargs = store._client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6390, 2)
        assert kwargs["socket_timeout"] == 3.0
    finally:
        await store.aclose()
    store = from_url("rediss://user:secret@127.0.0.1:6390/0")
    try:
        assert isinstance(store, RedisBackend)
        assert store.prefix == "substantial"
        kwargs = store._client.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("user", "secret")
        assert "SSL" in store._client.connection_pool.connection_class.__name__
    finally:
        await store.aclose()


def test_from_url_memory_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(from_url("memory://"), MemoryBackend)
    absolute = from_url(f"file://{tmp_path}/abs")
    assert isinstance(absolute, FSBackend)
    assert Path(absolute.root) == tmp_path / "abs"
    monkeypatch.chdir(tmp_path)
    relative = from_url("file://./rel/logs")
    assert isinstance(relative, FSBackend)
    assert Path(relative.root) == tmp_path / "rel" / "logs"
    plain = from_url("plain/logs")
    assert isinstance(plain, FSBackend)
    assert Path(plain.root) == tmp_path / "plain" / "logs"


def test_from_url_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backend URL scheme 'ftp'.*redis://.*s3://"):
        from_url("ftp://example/x")


async def test_wait_replicas_fails_a_write_no_replica_acknowledged(
    redis_server: RedisServer,
) -> None:
    backend = _backend(redis_server, wait_replicas=1, wait_timeout=0.05)
    try:
        with pytest.raises(BackendUnavailable, match=r"0 of 1 replicas acknowledged"):
            await backend.create("k", b"v")
    finally:
        await backend.aclose()


async def test_wait_replicas_returns_once_a_replica_has_the_write(tmp_path: Path) -> None:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    with (
        running_redis(tmp_path / "primary") as primary,
        running_redis(tmp_path / "replica") as replica,
    ):
        follower = aioredis.Redis.from_url(replica.url)
        backend = from_url(f"{primary.url}?prefix=w&wait_replicas=1&wait_timeout=5")
        try:
            await follower.replicaof("127.0.0.1", primary.port)

            async def linked() -> bool:
                info = await follower.info("replication")
                return bool(info.get("master_link_status") == "up")

            await wait_until(linked, 30, "the replica to link to its primary")
            assert isinstance(backend, RedisBackend)
            assert backend.wait_replicas == 1
            assert await backend.create("k", b"v") is not None
            assert await backend.replace("k", b"w", hashlib.sha1(b"v").hexdigest()) is not None
            assert await follower.get(b"w:k:k") == b"w"  # already on the replica
            assert await backend.delete("k")
            assert await follower.get(b"w:k:k") is None
        finally:
            await backend.aclose()
            await follower.aclose()
