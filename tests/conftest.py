from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from substantial import Conductor
from substantial.backends import Backend, FSBackend, MemoryBackend
from tests.harness import describe_agent, make_conductor

pytest_plugins = ["tests.servers"]

# Backends every storage-level and workflow-level test runs on. The redis and s3 entries
# are added with their server fixtures (tests/servers.py).
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("files", id="files"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("s3", id="s3", marks=pytest.mark.s3),
]


CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":  # type: ignore[attr-defined]
        item.stash[CALL_FAILED] = report.failed  # type: ignore[attr-defined]
    return report


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def open_test_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh, empty backend of the given kind for one test."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "files":
        return FSBackend(tmp_path / "store")
    if kind == "redis":
        from substantial.backends.redis import RedisBackend

        redis_url = request.getfixturevalue("redis_server").url
        return RedisBackend(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    if kind == "s3":
        from substantial.backends.s3 import S3Backend

        s3 = request.getfixturevalue("s3_server")
        bucket = f"test-{uuid.uuid4().hex[:24]}"
        await anyio.to_thread.run_sync(s3.create_bucket, bucket)
        return S3Backend(bucket, endpoint_url=s3.endpoint_url, region="us-east-1")
    raise ValueError(f"unknown test backend {kind!r}")


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Backend]:
    # Naming anyio_backend keeps anyio's plugin from re-creating the item without its param.
    store = await open_test_backend(request.param, request, tmp_path)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def conductor(backend: Backend, request: pytest.FixtureRequest) -> AsyncIterator[Conductor]:
    """
    A running agent on the test's backend (``tests.harness.make_conductor``), on the
    virtual clock: when idle it jumps to the next timer, so durable sleeps, receive
    timeouts and retry delays cost no real time. A test that watches a run wait out a
    timer (its SLEEPING status, a real deadline) asks for the wall clock with
    ``@pytest.mark.real_clock``. ``@pytest.mark.conductor(*workflows, **options)``, on a
    test or a module, registers workflows and overrides options.
    """
    marker = request.node.get_closest_marker("conductor")
    workflows = marker.args if marker else ()
    options = dict(marker.kwargs) if marker else {}
    virtual = request.node.get_closest_marker("real_clock") is None
    async with make_conductor(backend, *workflows, virtual_clock=virtual, **options) as running:
        yield running
        if request.node.stash.get(CALL_FAILED, False):  # what the agent was doing, for the report
            print(await describe_agent(running), file=sys.stderr)
