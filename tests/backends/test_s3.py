"""S3Backend on moto's real S3 server: conditional writes, bucket checks, outages, URLs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from botocore.config import Config

from substantial.backends import from_url
from substantial.backends.s3 import S3Backend
from substantial.errors import BackendError, BackendUnavailable
from tests.servers import S3Server, free_port

# Naming anyio_backend keeps anyio's plugin from duplicating each test per event loop.
pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("anyio_backend")]


async def _bucket(s3_server: S3Server) -> str:
    name = f"test-{uuid.uuid4().hex[:24]}"
    await anyio.to_thread.run_sync(s3_server.create_bucket, name)
    return name


def _backend(s3_server: S3Server, bucket: str, prefix: str = "", **options: Any) -> S3Backend:
    return S3Backend(
        bucket, prefix, endpoint_url=s3_server.endpoint_url, region="us-east-1", **options
    )


@pytest.fixture
async def store(s3_server: S3Server) -> AsyncIterator[S3Backend]:
    backend = _backend(s3_server, await _bucket(s3_server))
    async with backend:
        yield backend


async def test_conditional_writes_are_honoured(store: S3Backend) -> None:
    first = await store.create("k", b"one")
    assert first is not None
    assert await store.create("k", b"two") is None  # 412 If-None-Match
    assert await store.get("k") == (b"one", first)
    assert await store.replace("k", b"x", '"0123456789abcdef0123456789abcdef"') is None  # 412
    assert await store.replace("missing", b"x", first) is None  # 404
    second = await store.replace("k", b"two", first)
    assert second is not None
    assert second != first
    assert await store.delete("k", first) is False  # 412 If-Match on DeleteObject
    assert await store.get("k") == (b"two", second)
    assert await store.delete("missing", first) is False
    assert await store.delete("k", second) is True
    assert await store.get("k") is None


async def test_six_concurrent_creators_have_one_winner_per_key(
    s3_server: S3Server,
) -> None:
    bucket = await _bucket(s3_server)
    keys = [f"runs/r/log/{index:012d}" for index in range(60)]
    wins: dict[int, list[str]] = {}

    async def creator(number: int) -> None:
        async with _backend(s3_server, bucket) as backend:
            wins[number] = [
                key for key in keys if await backend.create(key, f"w{number}".encode()) is not None
            ]

    async with anyio.create_task_group() as tg:
        for number in range(6):
            tg.start_soon(creator, number)
    winners = {key: [n for n, won in wins.items() if key in won] for key in keys}
    assert all(len(names) == 1 for names in winners.values()), winners
    async with _backend(s3_server, bucket) as reader:
        stored = await reader.get_many(keys)
    for key, entry in zip(keys, stored, strict=True):
        assert entry is not None
        assert entry[0] == f"w{winners[key][0]}".encode()


async def test_prefix_is_a_folder(s3_server: S3Server) -> None:
    bucket = await _bucket(s3_server)
    async with (
        _backend(s3_server, bucket, "app/one") as one,
        _backend(s3_server, bucket, "app/one/") as same,
        _backend(s3_server, bucket, "app/two") as two,
        _backend(s3_server, bucket) as root,
    ):
        await one.put("runs/a", b"1")
        assert await same.get("runs/a") is not None
        assert await two.list("") == []
        assert await root.list("") == ["app/one/runs/a"]
        assert await one.list("runs/") == ["runs/a"]


async def test_missing_bucket_is_a_clear_error(s3_server: S3Server) -> None:
    store = _backend(s3_server, "no-such-bucket-here")
    async with store:
        with pytest.raises(BackendError) as caught:
            await store.check()
        assert not isinstance(caught.value, BackendUnavailable)
        assert "no-such-bucket-here" in str(caught.value)
        assert s3_server.endpoint_url in str(caught.value)
        # The first operation checks too, and says the same.
        with pytest.raises(BackendError, match=r"no-such-bucket-here.*does not exist"):
            await store.get("k")


async def test_check_passes_once_the_bucket_exists(s3_server: S3Server) -> None:
    store = _backend(s3_server, f"late-{uuid.uuid4().hex[:20]}")
    async with store:
        with pytest.raises(BackendError):
            await store.create("k", b"1")
        await anyio.to_thread.run_sync(s3_server.create_bucket, store.bucket)
        assert await store.create("k", b"1") is not None
        await store.check()


async def test_unreachable_endpoint_is_unavailable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    async with S3Backend("bucket", endpoint_url=endpoint, region="us-east-1") as store:
        with pytest.raises(BackendUnavailable) as caught:
            await store.get("k")
        assert caught.value.backend == "s3"
        assert endpoint in str(caught.value)
        assert caught.value.__cause__ is not None


async def test_paused_server_is_unavailable_then_recovers(s3_server: S3Server) -> None:
    config = Config(read_timeout=1, connect_timeout=1, retries={"max_attempts": 1})
    async with _backend(s3_server, await _bucket(s3_server), config=config) as store:
        await store.put("k", b"before")
        s3_server.pause()
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await store.get("k")
            assert caught.value.operation == "get"
        finally:
            s3_server.resume()
        entry = await store.get("k")
        assert entry is not None
        assert entry[0] == b"before"


async def test_requests_are_counted(store: S3Backend) -> None:
    await store.create("k", b"1")
    await store.create("k", b"1")
    await store.get("k")
    await store.list("")
    assert await store.delete("k")
    assert store.requests == {
        "check": 1,
        "create": 2,
        "get": 1,
        "list": 1,
        "head": 1,
        "delete": 1,
    }


async def test_aclose_twice(store: S3Backend) -> None:
    await store.put("k", b"1")
    await store.aclose()
    await store.aclose()


def test_from_url_s3() -> None:
    store = from_url(
        "s3://my-bucket/some/prefix?endpoint_url=http://127.0.0.1:9000&region=eu-west-1"
    )
    assert isinstance(store, S3Backend)
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix/")
    assert (store.endpoint_url, store.region) == ("http://127.0.0.1:9000", "eu-west-1")
    bare = from_url("s3://my-bucket")
    assert isinstance(bare, S3Backend)
    assert (bare.bucket, bare.prefix, bare.endpoint_url, bare.region) == (
        "my-bucket",
        "",
        None,
        None,
    )
    with pytest.raises(ValueError, match="unknown option"):
        from_url("s3://my-bucket?endpoint=http://x")
    with pytest.raises(ValueError, match="no bucket"):
        from_url("s3:///prefix")
