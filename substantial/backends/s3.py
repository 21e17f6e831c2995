"""
The S3 backend: one object per key, in one bucket under an optional prefix.

Atomicity comes from S3's conditional writes: ``create`` is ``PutObject`` with
``If-None-Match: *``, ``replace`` is ``PutObject`` with ``If-Match: <etag>`` and a
versioned ``delete`` is ``DeleteObject`` with ``If-Match``. A version is the object's
ETag. Listing is ``ListObjectsV2`` with ``StartAfter``, which S3 returns in UTF-8 byte
order (the same as byte order for the printable ASCII keys substantial uses).

Works with any endpoint that honours conditional writes (AWS S3, MinIO, moto's server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aioboto3
import aiohttp
import anyio
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from substantial.backends.base import Backend, Entry
from substantial.errors import BackendError, BackendRefused, BackendUnavailable

__all__ = ["S3Backend"]

#: Few retries inside botocore: the agent above backs off with jitter itself. At 20-70 ms
#: a request, botocore's default pool of 10 connections caps one client at a few hundred
#: requests a second, whatever the number of runs in flight: keep many requests in flight.
_DEFAULT_CONFIG = Config(
    retries={"max_attempts": 2, "mode": "standard"},
    connect_timeout=5,
    read_timeout=20,
    max_pool_connections=128,
)

_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "or AWS_PROFILE, as for any AWS client"
)

# A conditional write lost its race (412), or raced another conditional write (409).
_CONFLICT = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


#: An unconditional delete reads the ETag, then deletes if it still matches: this many
#: times at most while other writers keep changing the key.
_DELETE_ATTEMPTS = 16
#: Error codes of an S3 endpoint that refuses this client until someone acts.
_REFUSED = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "QuotaExceeded"})


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _conflict(exc: ClientError) -> bool:
    return _code(exc) in _CONFLICT or _status(exc) in (409, 412)


def _missing(exc: ClientError) -> bool:
    return _code(exc) in _MISSING or _status(exc) == 404


class S3Backend(Backend):
    """
    Storage in an S3 bucket (AWS, MinIO, moto, ...), through one lazily opened client.

    Credentials come from the standard AWS chain (environment, config files, instance
    roles). The first operation checks the bucket once (see :meth:`check`).

    :param bucket: the bucket, which must exist
    :param prefix: a folder inside the bucket; a ``/`` is appended if missing
    :param endpoint_url: for S3-compatible servers, e.g. ``http://127.0.0.1:9000``
    :param region: the region name; default from the AWS configuration
    :param client_options: passed to ``aioboto3.Session().client("s3", ...)``; a
        ``config`` given here is merged over this backend's (2 attempts, 5 s connect and
        20 s read timeouts, 128 connections in the pool)
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__()
        self.bucket = bucket
        prefix = prefix.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint_url = endpoint_url
        self.region = region
        config = client_options.pop("config", None)
        self._config = _DEFAULT_CONFIG.merge(config) if config is not None else _DEFAULT_CONFIG
        self._client_options = client_options
        self._lock = anyio.Lock()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._checked = False
        self._closed = False

    def __repr__(self) -> str:
        return f"S3Backend(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'the default AWS endpoint'}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def _open(self) -> Any:
        """The client, opened on first use; the bucket is checked until a check passes."""
        if self._client is not None and self._checked:
            return self._client
        async with self._lock:
            if self._closed:
                raise BackendError(f"{self!r} is closed")
            if self._client is None:
                stack = AsyncExitStack()
                session = aioboto3.Session()
                self._client = await stack.enter_async_context(
                    session.client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        config=self._config,
                        **self._client_options,
                    )
                )
                self._stack = stack
            if not self._checked:
                await self._head_bucket(self._client)
                self._checked = True
        return self._client

    async def check(self) -> None:
        """
        Check that the bucket exists and is accessible (one ``HeadBucket``).

        :raises BackendError: naming the bucket and endpoint, if it is missing or access
            is denied
        :raises BackendUnavailable: if the endpoint cannot be reached
        """
        checked_before = self._checked
        client = await self._open()
        if checked_before:
            await self._head_bucket(client)

    async def _head_bucket(self, client: Any) -> None:
        self.requests["check"] += 1
        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = _status(exc)
            if status == 404 or _code(exc) == "NoSuchBucket":
                raise BackendError(f"S3 {self._where} does not exist") from exc
            if status == 403:
                raise BackendError(
                    f"S3 access denied to {self._where}: check the credentials and policy"
                ) from exc
            if status >= 500:
                raise BackendUnavailable(self.name, "check", f"{self._where}: {exc}") from exc
            raise BackendError(f"S3 {self._where} is not usable: {exc}") from exc
        except (BotoConnectionError, HTTPClientError, aiohttp.ClientError) as exc:
            raise BackendUnavailable(self.name, "check", f"{self._where}: {exc}") from exc
        except NoCredentialsError as exc:
            raise BackendRefused(self.name, "check", _NO_CREDENTIALS) from exc

    @asynccontextmanager
    async def _request(self, op: str) -> AsyncIterator[None]:
        """Count one request and translate transport and server errors into ours."""
        self.requests[op] += 1
        try:
            yield
        except ClientError as exc:
            if _status(exc) >= 500 or _code(exc) in ("SlowDown", "ServiceUnavailable"):
                raise BackendUnavailable(self.name, op, f"{self._where}: {exc}") from exc
            if _status(exc) == 403 or _code(exc) in _REFUSED:
                raise BackendRefused(self.name, op, f"{self._where}: {exc}") from exc
            raise
        except (BotoConnectionError, HTTPClientError, aiohttp.ClientError) as exc:
            raise BackendUnavailable(self.name, op, f"{self._where}: {exc}") from exc
        except NoCredentialsError as exc:
            raise BackendRefused(self.name, op, _NO_CREDENTIALS) from exc
        except BotoCoreError as exc:
            raise BackendError(f"S3 {op} on {self._where} failed: {exc}") from exc

    async def get(self, key: str) -> Entry | None:
        """
        Read a key with one ``GetObject``.

        :return: ``(data, etag)``, or ``None`` if the key does not exist
        :raises BackendUnavailable: if the endpoint cannot be reached
        """
        client = await self._open()
        try:
            async with self._request("get"):
                response = await client.get_object(Bucket=self.bucket, Key=self._key(key))
                async with response["Body"] as body:
                    data: bytes = await body.read()
        except ClientError as exc:
            if _missing(exc):
                return None
            raise self._unexpected("get", exc) from exc
        return data, str(response["ETag"])

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> str:
        """
        Write a key unconditionally with one ``PutObject``.

        :return: the new ETag
        :raises BackendUnavailable: if the endpoint cannot be reached
        """
        client = await self._open()
        try:
            async with self._request("put"):
                response = await client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data
                )
        except ClientError as exc:
            raise self._unexpected("put", exc) from exc
        return str(response["ETag"])

    async def create(self, key: str, data: bytes, *, durable: bool = True) -> str | None:
        """
        Write a key only if absent: ``PutObject`` with ``If-None-Match: *``.

        :return: the new ETag, or ``None`` if the key already existed (412), or another
            conditional write on it was in flight (409)
        :raises BackendUnavailable: if the endpoint cannot be reached; the write may or
            may not have happened
        """
        client = await self._open()
        try:
            async with self._request("create"):
                response = await client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
        except ClientError as exc:
            if _conflict(exc):
                return None
            raise self._unexpected("create", exc) from exc
        return str(response["ETag"])

    async def replace(
        self, key: str, data: bytes, version: str, *, durable: bool = True
    ) -> str | None:
        """
        Overwrite a key only if its ETag is still ``version``: ``PutObject`` with
        ``If-Match``.

        :return: the new ETag, or ``None`` if the key changed (412, 409) or is gone (404)
        :raises BackendUnavailable: if the endpoint cannot be reached; the write may or
            may not have happened
        """
        client = await self._open()
        try:
            async with self._request("replace"):
                response = await client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=version
                )
        except ClientError as exc:
            if _conflict(exc) or _missing(exc):
                return None
            raise self._unexpected("replace", exc) from exc
        return str(response["ETag"])

    async def delete(self, key: str, version: str | None = None, *, durable: bool = True) -> bool:
        """
        Delete a key; with ``version``, only if its ETag is unchanged (``DeleteObject``
        with ``If-Match``).

        Without ``version`` this reads the current ETag first and deletes with it, so
        that of several concurrent deletes exactly one returns ``True``.

        :return: whether this call deleted the key
        :raises BackendUnavailable: if the endpoint cannot be reached
        """
        if version is not None:
            return await self._delete_if(key, version)
        for _ in range(_DELETE_ATTEMPTS):  # each miss means another writer changed the key
            current = await self._head(key)
            if current is None:
                return False
            if await self._delete_if(key, current):
                return True
        raise BackendUnavailable(
            self.name, "delete", f"{key!r} changed under each of {_DELETE_ATTEMPTS} attempts"
        )

    async def _head(self, key: str) -> str | None:
        client = await self._open()
        try:
            async with self._request("head"):
                response = await client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise self._unexpected("head", exc) from exc
        return str(response["ETag"])

    async def _delete_if(self, key: str, version: str) -> bool:
        client = await self._open()
        try:
            async with self._request("delete"):
                await client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=version)
        except ClientError as exc:
            if _conflict(exc) or _missing(exc):
                return False
            raise self._unexpected("delete", exc) from exc
        return True

    async def list(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """
        List keys under ``prefix`` with ``ListObjectsV2`` (one request per 1,000 keys).

        :param after: only keys strictly greater than this full key
        :param limit: at most this many keys
        :return: full keys, ascending
        :raises BackendUnavailable: if the endpoint cannot be reached
        """
        client = await self._open()
        keys: list[str] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if after is not None:
            request["StartAfter"] = self._key(after)
        cut = len(self.prefix)
        while len(keys) < limit:
            request["MaxKeys"] = min(limit - len(keys), 1000)
            try:
                async with self._request("list"):
                    response = await client.list_objects_v2(**request)
            except ClientError as exc:
                raise self._unexpected("list", exc) from exc
            keys.extend(str(item["Key"])[cut:] for item in response.get("Contents", ()))
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                break
            request["ContinuationToken"] = token
        return keys

    def _unexpected(self, op: str, exc: ClientError) -> BackendError:
        return BackendError(f"S3 {op} on {self._where} failed: {exc}")

    async def aclose(self) -> None:
        """Close the client. Safe to call twice."""
        async with self._lock:
            self._closed = True
            stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
