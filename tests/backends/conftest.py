"""Fixtures shared by the backend tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from tests.servers import RedisServer

if TYPE_CHECKING:
    import redis.asyncio as aioredis


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client, for looking behind the redis backend's back."""
    import redis.asyncio as aioredis  # the [redis] extra: only where a test asks for it

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()
