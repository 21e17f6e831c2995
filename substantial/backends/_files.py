"""
The files backend's ground rules: which keys can name a file, which errno values mean
"unavailable" or "refused", and the small file operations it builds on.
"""

from __future__ import annotations

import errno
import hashlib
import os
from contextlib import suppress

__all__ = [
    "LOCKS",
    "MAX_NAME_BYTES",
    "REFUSED",
    "RESERVED",
    "TMP",
    "UNAVAILABLE",
    "content_version",
    "fsync_dir",
    "key_problem",
    "read_file",
    "root_problem",
    "unlink_quietly",
]

TMP = ".tmp"
LOCKS = ".locks"
RESERVED = frozenset({TMP, LOCKS})
MAX_NAME_BYTES = 255

#: errno values that mean "the storage is not usable right now", as opposed to a bug.
UNAVAILABLE = frozenset(
    getattr(errno, name)
    for name in (
        "EIO",
        "ESTALE",
        "ETIMEDOUT",
        "ENOTCONN",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENETDOWN",
        "ENETUNREACH",
        "ENOLCK",
        "ENODEV",
        "ENXIO",
        "ENOMEDIUM",
    )
    if hasattr(errno, name)
)
#: errno values that mean "the storage refuses this process's writes until someone acts".
REFUSED = frozenset(
    getattr(errno, name)
    for name in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT")
    if hasattr(errno, name)
)


def content_version(data: bytes) -> str:
    """A key's version: a hash of its bytes, so writing the same bytes keeps it."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a file under the root, or ``None`` if it can."""
    if not key:
        return "it is empty"
    if "\0" in key:
        return "it contains NUL"
    if key.startswith("/"):
        return "it starts with '/'"
    parts = key.split("/")
    for part in parts:
        if not part:
            return "it has an empty component"
        if part in (".", ".."):
            return f"it has a {part!r} component"
        try:
            size = len(part.encode())
        except UnicodeEncodeError:
            return "it is not valid unicode"
        if size > MAX_NAME_BYTES:
            return f"a component is longer than {MAX_NAME_BYTES} bytes"
    if parts[0] in RESERVED:
        return f"{parts[0]!r} is reserved by the files backend"
    return None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def read_file(path: str) -> bytes | None:
    """A file's bytes, or ``None`` if it is absent (or vanished under us) or a directory."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def root_problem(root: str) -> str:
    """What is wrong with a files backend's root folder itself, if anything."""
    if os.path.isdir(root):
        return ""
    if os.path.lexists(root):
        return f"{root} is not a folder"
    return f"the folder {root} does not exist and cannot be made"
