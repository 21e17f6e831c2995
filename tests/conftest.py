from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from substantial.backends import Backend, FSBackend, MemoryBackend

# Backends every storage-level and workflow-level test runs on. The redis and s3 entries
# are added with their server fixtures (tests/servers.py).
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("files", id="files"),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every `async def` test runs under anyio without a marker on each one.
    for item in items:
        if isinstance(item, pytest.Function) and _is_async(item.obj):
            item.add_marker(pytest.mark.anyio)


def _is_async(obj: object) -> bool:
    import inspect

    return inspect.iscoroutinefunction(obj)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def open_test_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh, empty backend of the given kind for one test."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "files":
        return FSBackend(tmp_path / "store")
    raise ValueError(f"unknown test backend {kind!r}")


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    store = await open_test_backend(request.param, request, tmp_path)
    try:
        yield store
    finally:
        await store.aclose()
