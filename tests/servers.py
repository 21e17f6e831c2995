"""
Real servers for the tests: ``redis-server`` and moto's S3 server, each started once per
session on a free loopback port.

A server that cannot start skips the tests that need it, or fails them when ``CI=true``
(so a CI image that lost its redis-server binary cannot go green by skipping).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.server_processes import (
    TEST_CREDENTIALS,
    RedisServer,
    S3Server,
    ServerUnavailable,
    free_port,
)

__all__ = [
    "RedisServer",
    "S3Server",
    "free_port",
    "redis_server",
    "running_moto",
    "running_redis",
    "s3_server",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server of one's own (skipped, or failed on CI, if it cannot start)."""
    try:
        server = RedisServer(workdir)
        server.start()
    except (OSError, ServerUnavailable) as exc:
        _unavailable(f"cannot start redis-server: {exc}")
        raise AssertionError("unreachable") from None
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def running_moto() -> Iterator[S3Server]:
    """moto's S3 server of one's own, with test credentials in the environment meanwhile."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in TEST_CREDENTIALS.items():
            env.setenv(name, value)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        try:
            server = S3Server()
            server.start()
        except (OSError, ServerUnavailable) as exc:
            _unavailable(f"cannot start moto's S3 server: {exc}")
            raise AssertionError("unreachable") from None
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the whole session."""
    with running_moto() as server:
        yield server
