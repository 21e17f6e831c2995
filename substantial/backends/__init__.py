"""
Storage backends. ``MemoryBackend`` and ``FSBackend`` need nothing extra; ``RedisBackend``
and ``S3Backend`` import their client libraries only when first asked for, so those stay
optional extras (``substantial[redis]``, ``substantial[s3]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from substantial.backends.base import Backend, Entry
from substantial.backends.fs import FSBackend
from substantial.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from substantial.backends.redis import RedisBackend
    from substantial.backends.s3 import S3Backend

__all__ = ["Backend", "Entry", "FSBackend", "MemoryBackend", "RedisBackend", "S3Backend"]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from substantial.backends.redis import RedisBackend

        return RedisBackend
    if name == "S3Backend":
        from substantial.backends.s3 import S3Backend

        return S3Backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
