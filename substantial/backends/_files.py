"""
The files backend's ground rules: which keys can name a file, which errno values mean
"unavailable" or "refused", and the small file operations it builds on.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

__all__ = [
    "BOOT",
    "LOCKS",
    "MAX_NAME_BYTES",
    "REFUSED",
    "RESERVED",
    "TMP",
    "UNAVAILABLE",
    "content_version",
    "fsync_dir",
    "fsync_removed",
    "key_problem",
    "locked",
    "make_empty",
    "read_file",
    "remove_empty_folders",
    "replace_file",
    "root_problem",
    "unlink_quietly",
    "with_folders",
    "write_temp",
]

_T = TypeVar("_T")

TMP = ".tmp"
LOCKS = ".locks"
#: The record of the boot recovered from (:mod:`substantial.backends._boot`).
BOOT = ".boot"
RESERVED = frozenset({TMP, LOCKS, BOOT})
MAX_NAME_BYTES = 255

#: Keys hash onto this many lock files. Mutual exclusion per key is all a lock must give;
#: a fixed set keeps the lock files from growing with every key ever written.
LOCK_STRIPES = 4096

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
    if (  # the common case at a glance: short ASCII, no empty, dot or reserved part
        key.isascii()
        and len(key) <= MAX_NAME_BYTES
        and key[:1] not in ("", "/", ".")
        and key[-1] != "/"
        and "//" not in key
        and "/." not in key
        and "\0" not in key
    ):
        return None
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


def fsync_removed(path: str, root: str) -> None:
    """
    Flush the removal of the file ``path``: its folder, or, if a listing removed that
    folder (left empty) meanwhile, the nearest folder above it that is still there.
    """
    folder = os.path.dirname(path)
    while True:
        try:
            fsync_dir(folder)
            return
        except FileNotFoundError:
            if len(folder) <= len(root):
                raise
            folder = os.path.dirname(folder)


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


def _open_in(folder: str, path: str, flags: int) -> int:
    """``os.open`` a file of ``folder``, making the folder if it is missing."""
    return with_folders(
        lambda: os.open(path, flags, 0o666), lambda: os.makedirs(folder, exist_ok=True)
    )


#: How often a write makes its folders again when they vanish under it (each time, a
#: listing removed one as empty between the write making it and using it).
REMAKES = 8


def with_folders(write: Callable[[], _T], make_folders: Callable[[], None]) -> _T:
    """
    ``write`` (or open) a file, making its folders if they are missing, and again if a
    listing removed one as empty meanwhile (``FSBackend.list_before``).
    """
    for _ in range(REMAKES):
        try:
            return write()
        except FileNotFoundError:
            pass
        with suppress(FileNotFoundError):  # a folder removed as it was made
            make_folders()
    return write()  # the last try: its FileNotFoundError is raised


def make_empty(path: str) -> None:
    """Create the empty file ``path``; :class:`FileExistsError` if anything is there."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))


def write_temp(tmp: str, data: bytes, fsync: bool) -> str:
    """Write ``data`` to a new file in the folder ``tmp`` (made if need be); its path."""
    temp = f"{tmp}/{secrets.token_hex(16)}"
    fd = _open_in(tmp, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            if fsync:
                os.fsync(fd)
    except BaseException:
        unlink_quietly(temp)
        raise
    return temp


def replace_file(tmp: str, path: str, data: bytes, fsync: bool) -> None:
    """
    Make ``path`` hold ``data`` whole, at once for readers: a new file in the folder
    ``tmp`` renamed over it (its folder is not flushed: the caller's to do).
    """
    temp = write_temp(tmp, data, fsync)
    try:
        os.replace(temp, path)
    except BaseException:
        unlink_quietly(temp)
        raise


@contextmanager
def locked(locks: str, key: str) -> Iterator[None]:
    """Hold the ``flock`` of ``key``'s lock stripe in the folder ``locks``."""
    stripe = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest())
    lock = f"{locks}/{stripe % LOCK_STRIPES:03x}"
    fd = _open_in(locks, lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed, or the process dies
        yield
    finally:
        os.close(fd)


def remove_empty_folders(top: str) -> None:
    """Remove ``top`` and the folders below it that hold no file, deepest first."""
    for folder, _, _ in sorted(os.walk(top), key=lambda found: -len(found[0])):
        try:
            os.rmdir(folder)
        except OSError:  # not empty (a file, or a writer got there first), or gone
            continue
