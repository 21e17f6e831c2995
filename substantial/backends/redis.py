"""
The Redis backend: every key is a Redis string, with one sorted set as the ordered index.

Layout, for a backend with ``prefix="substantial"``::

    substantial:k:{key}    the value (a plain string)
    substantial:keys       sorted set of every full key above, all with score 0

Listing is ``ZRANGEBYLEX`` on the index (never ``KEYS`` or ``SCAN``). Every write that
touches a value and the index is one Lua script, so the two never disagree. Commands
issued in the same event-loop tick share one pipeline (see ``_redis_batch``). A version is
the SHA-1 hex digest of the content (``redis.sha1hex`` in Lua, :func:`hashlib.sha1` here),
so any client can compute it without reading extra metadata.

The layout puts the index and the values in different hash slots, so this backend needs a
single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from substantial.backends._redis_batch import Batcher, Closed
from substantial.backends.base import Backend, Entry
from substantial.errors import BackendError, BackendRefused, BackendUnavailable

__all__ = ["RedisBackend"]

#: Reply prefixes of a server that refuses writes until someone acts, as Redis words them
#: (inside a script's error they follow "ERR Error running script ...").
_REFUSALS = ("OOM ", "READONLY ", "NOPERM ", "MISCONF ")


def _refusal(exc: ResponseError) -> bool:
    text = str(exc)
    return any(text.startswith(p) or f" {p}" in text or f"-{p}" in text for p in _REFUSALS)


# KEYS[1] = value key (also its index member), KEYS[2] = index; ARGV[1] = data.
_CREATE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
    redis.call('ZADD', KEYS[2], 0, KEYS[1])
    return 1
end
return 0
"""

_PUT = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, KEYS[1])
return 1
"""

# ARGV[1] = new data, ARGV[2] = expected version (SHA-1 hex of the current content).
_REPLACE = """
local current = redis.call('GET', KEYS[1])
if not current or redis.sha1hex(current) ~= ARGV[2] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# ARGV[1] = expected version, or '' for an unconditional delete.
_DELETE = """
if ARGV[1] ~= '' then
    local current = redis.call('GET', KEYS[1])
    if not current or redis.sha1hex(current) ~= ARGV[1] then
        return 0
    end
end
local deleted = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return deleted
"""

#: Defaults for the client; anything given to :class:`RedisBackend` wins over them.
_CLIENT_DEFAULTS: dict[str, Any] = {
    # A server that stops answering must surface as BackendUnavailable, not a hang.
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    # No silent retries: a retried create/replace/delete whose first attempt reached the
    # server would report the wrong outcome. The agent above retries with backoff.
    "retry": Retry(NoBackoff(), 0),
    # Connections in the pool, and how long a caller waits for one when all are busy.
    "max_connections": 100,
    "timeout": 10.0,
}


def _version(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _successor(value: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``value``."""
    stripped = value.rstrip(b"\xff")
    if not stripped:
        raise ValueError("no successor for an all-0xff prefix")
    return stripped[:-1] + bytes([stripped[-1] + 1])


class RedisBackend(Backend):
    """
    Storage on one Redis server (or primary), through a single connection pool.

    :param url: a ``redis://`` or ``rediss://`` URL; credentials, database and TLS
        options go in the URL as redis-py's ``from_url`` understands them
    :param prefix: the namespace: keys are stored at ``{prefix}:k:{key}``, the index at
        ``{prefix}:keys``
    :param wait_replicas: after each write, wait (``WAIT``) until this many replicas
        have it, so a failover to a replica cannot lose a write that was reported
        done. If fewer acknowledge within ``wait_timeout`` seconds the write raises
        :class:`~substantial.errors.BackendUnavailable` (its outcome is unknown, as
        after any outage). 0 (the default) does not wait: see the README on durability.
    :param wait_timeout: how long a write waits for ``wait_replicas`` replicas, in seconds
    :param client_options: passed to
        :meth:`redis.asyncio.BlockingConnectionPool.from_url`, overriding this backend's
        defaults (10 s socket timeout, 5 s connect timeout, no retries, 100 connections,
        10 s wait for a free one)
    """

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "substantial",
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        **client_options: Any,
    ) -> None:
        super().__init__()
        if wait_replicas < 0:
            raise ValueError("wait_replicas must be 0 or more")
        self.url = url
        self.prefix = prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        options = {**_CLIENT_DEFAULTS, **client_options}
        options["decode_responses"] = False
        # A blocking pool: past `max_connections` callers wait for a free connection
        # (up to `timeout`) instead of failing at once with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(url, **options)
        self._client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._client.auto_close_connection_pool = True
        self._value_prefix = f"{prefix}:k:".encode()
        self._index = f"{prefix}:keys".encode()
        self._closed = False
        sources = (_CREATE, _PUT, _REPLACE, _DELETE)
        self._create, self._put, self._replace, self._delete = map(
            _version, map(str.encode, sources)
        )
        self._batch = Batcher(
            self._client,
            {_version(source.encode()): source for source in sources},
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )

    def __repr__(self) -> str:
        return f"RedisBackend(prefix={self.prefix!r})"

    def _key(self, key: str) -> bytes:
        return self._value_prefix + key.encode()

    @asynccontextmanager
    async def _request(self, op: str) -> AsyncIterator[None]:
        """Count one round trip and translate redis-py's errors into ours."""
        self.requests[op] += 1
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, BusyLoadingError) as exc:
            raise BackendUnavailable(self.name, op, str(exc) or type(exc).__name__) from exc
        except (OutOfMemoryError, ReadOnlyError, NoPermissionError) as exc:
            raise BackendRefused(self.name, op, f"{type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            if _refusal(exc):  # a Lua script's write refused: the reply wraps the reason
                raise BackendRefused(self.name, op, f"{type(exc).__name__}: {exc}") from exc
            raise BackendError(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc
        except RedisError as exc:
            raise BackendError(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc

    async def _write(self, op: str, script: str, keys: list[bytes], args: list[Any]) -> Any:
        """
        Run a write script (``EVALSHA``), batched with the commands of the same tick; with
        ``wait_replicas`` the batch ends with one ``WAIT`` (the replicas' acknowledgement).
        """
        async with self._request(op):
            result, acknowledged = await self._batch.call(
                "EVALSHA", script, len(keys), *keys, *args, write=True
            )
        if acknowledged is not None and acknowledged < self.wait_replicas:
            raise BackendUnavailable(
                self.name, op, f"{acknowledged} of {self.wait_replicas} replicas acknowledged "
                f"the write within {self.wait_timeout:g}s; a failover could lose it",
            )  # fmt: skip
        return result

    async def _read(self, op: str, *command: Any) -> Any:
        """
        Run a read-only command, once more if its connection turns out to be dead.

        Reads are safe to repeat, and a pooled connection can die while idle (server
        restart, ``CLIENT KILL``) before the event loop notices. Writes are never
        repeated: their first attempt may have reached the server.
        """
        try:
            async with self._request(op):
                return (await self._batch.call(*command))[0]
        except BackendUnavailable as exc:
            cause = exc.__cause__
            if not isinstance(cause, RedisConnectionError) or isinstance(
                cause, BusyLoadingError | Closed
            ):
                raise
        async with self._request(op):
            return (await self._batch.call(*command))[0]

    async def get(self, key: str) -> Entry | None:
        """
        Read a key with one ``GET``.

        :return: ``(data, version)``, or ``None`` if the key does not exist
        :raises BackendUnavailable: if Redis cannot be reached
        """
        data = cast("bytes | None", await self._read("get", "GET", self._key(key)))
        return None if data is None else (data, _version(data))

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """
        Read several keys with one ``MGET``.

        :return: one entry (or ``None``) per key, in the order of ``keys``
        :raises BackendUnavailable: if Redis cannot be reached
        """
        if not keys:
            return []
        names = [self._key(key) for key in keys]
        values = cast("list[bytes | None]", await self._read("get_many", "MGET", *names))
        return [None if data is None else (data, _version(data)) for data in values]

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> str:
        """
        Write a key unconditionally (``SET`` + ``ZADD`` in one script).

        :return: the new version
        :raises BackendUnavailable: if Redis cannot be reached
        """
        await self._write("put", self._put, [self._key(key), self._index], [data])
        return _version(data)

    async def create(self, key: str, data: bytes, *, durable: bool = True) -> str | None:
        """
        Write a key only if it is absent (``SET NX`` + ``ZADD`` in one script).

        :return: the new version, or ``None`` if the key already existed
        :raises BackendUnavailable: if Redis cannot be reached; the write may or may not
            have happened
        """
        created = await self._write("create", self._create, [self._key(key), self._index], [data])
        return _version(data) if created else None

    async def replace(
        self, key: str, data: bytes, version: str, *, durable: bool = True
    ) -> str | None:
        """
        Overwrite a key only if its content still hashes to ``version``.

        :return: the new version, or ``None`` if the key changed or no longer exists
        :raises BackendUnavailable: if Redis cannot be reached; the write may or may not
            have happened
        """
        keys = [self._key(key), self._index]
        replaced = await self._write("replace", self._replace, keys, [data, version])
        return _version(data) if replaced else None

    async def delete(self, key: str, version: str | None = None, *, durable: bool = True) -> bool:
        """
        Delete a key and its index entry; with ``version``, only if it is unchanged.

        :return: whether this call deleted the key
        :raises BackendUnavailable: if Redis cannot be reached
        """
        keys = [self._key(key), self._index]
        deleted = await self._write("delete", self._delete, keys, [version or ""])
        return bool(deleted)

    async def list(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """
        List keys under ``prefix`` with one ``ZRANGEBYLEX`` on the index.

        :param after: only keys strictly greater than this full key
        :param limit: at most this many keys
        :return: full keys, ascending
        :raises BackendUnavailable: if Redis cannot be reached
        """
        if limit <= 0:
            return []
        low = self._key(prefix)
        high = b"(" + _successor(low)
        start = b"[" + low
        if after is not None and self._key(after) >= low:
            start = b"(" + self._key(after)
        command = ("ZRANGEBYLEX", self._index, start, high, "LIMIT", 0, limit)
        members = cast("list[bytes]", await self._read("list", *command))
        cut = len(self._value_prefix)
        return [member[cut:].decode() for member in members]

    async def aclose(self) -> None:
        """Close the connection pool. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._batch.aclose()
        await self._client.aclose()
