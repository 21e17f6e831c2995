"""
Storage backends. ``MemoryBackend`` and ``FSBackend`` need nothing extra; ``RedisBackend``
and ``S3Backend`` import their client libraries only when first asked for, so those stay
optional extras (``substantial[redis]``, ``substantial[s3]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from substantial.backends.base import Backend, Entry
from substantial.backends.fs import FSBackend
from substantial.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from substantial.backends.redis import RedisBackend
    from substantial.backends.s3 import S3Backend

__all__ = [
    "Backend",
    "Entry",
    "FSBackend",
    "MemoryBackend",
    "RedisBackend",
    "S3Backend",
    "from_url",
]

#: The URL schemes :func:`from_url` understands.
SCHEMES = ("memory", "file", "redis", "rediss", "s3")


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from substantial.backends.redis import RedisBackend

        return RedisBackend
    if name == "S3Backend":
        from substantial.backends.s3 import S3Backend

        return S3Backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def from_url(url: str) -> Backend:
    """
    Build a backend from a URL, so that the CLI and configuration can name one.

    * ``memory://``: a fresh :class:`MemoryBackend`
    * ``file:///abs/path``, ``file://./rel/path`` or a plain path: :class:`FSBackend`
    * ``redis://[user:password@]host:port/db?prefix=substantial`` (or ``rediss://`` for
      TLS): :class:`RedisBackend`; ``wait_replicas`` and ``wait_timeout`` are its
      options of the same names, other query parameters go to redis-py
    * ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1``:
      :class:`S3Backend`

    :param url: the backend's URL
    :return: a backend that has not connected yet
    :raises ValueError: if the scheme is unknown or the URL is malformed
    """
    if "://" not in url:
        return FSBackend(Path(url))
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryBackend()
    if scheme == "file":
        return _files_from_url(url, rest)
    if scheme in ("redis", "rediss"):
        return _redis_from_url(url)
    if scheme == "s3":
        return _s3_from_url(url)
    known = ", ".join(f"{name}://" for name in SCHEMES)
    raise ValueError(f"unknown backend URL scheme {scheme!r} in {url!r}; known: {known}")


def _files_from_url(url: str, rest: str) -> FSBackend:
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest:
        raise ValueError(f"no path in backend URL {url!r}")
    return FSBackend(Path(rest))


def _redis_from_url(url: str) -> RedisBackend:
    from substantial.backends.redis import RedisBackend

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = ("prefix", "wait_replicas", "wait_timeout")
    options = {name: value for name, value in query if name in ours}
    rest_query = urlencode([(name, value) for name, value in query if name not in ours])
    try:
        wait_replicas = int(options.get("wait_replicas", "0"))
        wait_timeout = float(options.get("wait_timeout", "1"))
    except ValueError:
        raise ValueError(
            f"wait_replicas (a whole number) or wait_timeout (seconds) is malformed in {url!r}"
        ) from None
    prefix = options.get("prefix") or "substantial"
    return RedisBackend(
        urlunsplit(parts._replace(query=rest_query)),
        prefix=prefix,
        wait_replicas=wait_replicas,
        wait_timeout=wait_timeout,
    )


def _s3_from_url(url: str) -> S3Backend:
    from substantial.backends.s3 import S3Backend

    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"no bucket in backend URL {url!r}")
    options = dict(parse_qsl(parts.query))
    unknown = sorted(set(options) - {"endpoint_url", "region"})
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} in backend URL {url!r}; "
            "s3:// takes endpoint_url and region"
        )
    return S3Backend(
        parts.netloc,
        parts.path.lstrip("/"),
        endpoint_url=options.get("endpoint_url"),
        region=options.get("region"),
    )
