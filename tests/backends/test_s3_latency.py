"""
S3 at a real object store's latency: through ``bench/latency_proxy.py`` (a fixed delay
added to every request in front of moto) the conditional writes behave as without it,
and one backend keeps many requests in flight instead of botocore's default 10.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from bench.latency_proxy import LatencyProxy
from substantial.backends.s3 import S3Backend
from tests.servers import S3Server

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("anyio_backend")]


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[LatencyProxy]:
    with LatencyProxy(s3_server.port, delay=0.030) as latency_proxy:
        yield latency_proxy


@pytest.fixture
async def store(s3_server: S3Server, proxy: LatencyProxy) -> AsyncIterator[S3Backend]:
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    await anyio.to_thread.run_sync(s3_server.create_bucket, bucket)
    backend = S3Backend(bucket, endpoint_url=proxy.endpoint_url, region="us-east-1")
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_conditional_writes_hold_through_the_delay(
    store: S3Backend, proxy: LatencyProxy
) -> None:
    version = await store.create("k", b"1")
    assert version is not None
    assert await store.create("k", b"2") is None
    assert await store.replace("k", b"3", '"not-the-etag"') is None
    replaced = await store.replace("k", b"3", version)
    assert replaced is not None
    assert await store.get("k") == (b"3", replaced)
    assert await store.list("") == ["k"]
    assert await store.delete("k", version) is False
    assert await store.delete("k") is True
    assert await store.get("k") is None
    assert proxy.requests == sum(store.requests.values())


async def test_concurrent_creates_of_one_key_have_one_winner(store: S3Backend) -> None:
    results: list[str | None] = []

    async def create(index: int) -> None:
        results.append(await store.create("one", f"writer {index}".encode()))

    async with anyio.create_task_group() as tg:
        for index in range(40):
            tg.start_soon(create, index)
    assert sum(result is not None for result in results) == 1


async def test_fifty_callers_have_fifty_requests_in_flight(
    store: S3Backend, proxy: LatencyProxy
) -> None:
    await store.check()
    # Long enough that all 50 requests are sent before the first is answered, even on a
    # loaded machine (each costs the client about a millisecond of CPU).
    proxy.delay = 0.5
    async with anyio.create_task_group() as tg:
        for index in range(50):
            tg.start_soon(store.create, f"k/{index}", b"x")
    # botocore's default pool would hold this at 10, whatever the number of callers.
    assert proxy.max_in_flight == 50
    assert len(await store.list("k/")) == 50


def test_the_proxy_runs_as_a_process_of_its_own(s3_server: S3Server) -> None:
    command = [sys.executable, "-m", "bench.latency_proxy", str(s3_server.port), "--delay", "0"]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        port = int(process.stdout.readline())
        assert LatencyProxy.stats(port) == {"requests": 0, "max_in_flight": 0}
        bucket = f"test-{uuid.uuid4().hex[:24]}"
        s3_server.create_bucket(bucket)

        async def use() -> None:
            async with S3Backend(
                bucket, endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1"
            ) as backend:
                assert await backend.create("k", b"v") is not None
                assert await backend.get("k") is not None

        anyio.run(use)
        assert LatencyProxy.stats(port)["requests"] == 3  # HeadBucket, PutObject, GetObject
        process.stdin.close()
        assert process.wait(timeout=30) == 0
