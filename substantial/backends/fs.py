"""
A backend on a local (or shared POSIX) file system: one file per key.

Layout under ``root``: key ``a/b/c`` is the file ``root/a/b/c``; ``root/.tmp/`` holds
files being written and ``root/.locks/`` the lock files, so neither name can start a key.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import heapq
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import anyio.to_thread

from substantial.backends._files import (
    LOCKS,
    REFUSED,
    RESERVED,
    TMP,
    UNAVAILABLE,
    content_version,
    fsync_dir,
    key_problem,
    read_file,
    root_problem,
    unlink_quietly,
)
from substantial.backends.base import Backend, Entry
from substantial.errors import BackendRefused, BackendUnavailable

__all__ = ["FSBackend"]

_T = TypeVar("_T")

#: Keys hash onto this many lock files. Mutual exclusion per key is all a lock must give;
#: a fixed set keeps the lock files from growing with every key ever written.
_LOCK_STRIPES = 4096
#: How often a write makes its folders again when they vanish under it (each time, a
#: listing removed one as empty between the write making it and using it).
_REMAKES = 8


class FSBackend(Backend):
    """
    Keys as files under ``root``, safe to share between processes on one machine.

    ``create`` writes a temporary file and hard-links it to the key's name, which fails if
    the name exists; ``put``, ``replace`` and ``delete`` hold an ``flock`` on the key's lock
    file while they check the version and ``os.replace`` or unlink the file. A version is
    a hash of the content, so any process computes it from the file alone (and writing
    the same bytes again gives the same version).

    A key cannot also be a directory of other keys: with ``a/b`` stored, writing
    ``a/b/c`` raises :class:`ValueError` (and the other way round). Empty directories left
    by deletes are kept.

    :param root: the folder holding the keys; created on first write
    :param fsync: flush files and directories to disk before a write returns. With
        ``fsync=False`` writes are faster but a power loss or kernel crash can lose or
        tear writes that were already reported done, which breaks the log's guarantees:
        use it only for tests and throwaway data
    """

    name = "files"

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        super().__init__()
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        self._tmp = os.path.join(self.root, TMP)
        self._locks = os.path.join(self.root, LOCKS)

    def __repr__(self) -> str:
        return f"FSBackend({self.root!r}, fsync={self.fsync})"

    # -- the contract -------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """
        Read a key; see :meth:`Backend.get`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["get"] += 1
        return await self._run("get", lambda: self._get(path))

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Read several keys in one worker-thread call; see :meth:`Backend.get_many`."""
        paths = [self._path(key) for key in keys]
        self.requests["get"] += len(paths)
        return await self._run("get", lambda: [self._get(path) for path in paths])

    async def put(self, key: str, data: bytes) -> str:
        """
        Write a key unconditionally; see :meth:`Backend.put`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["put"] += 1
        return await self._run("put", lambda: self._put(key, path, data))

    async def create(self, key: str, data: bytes) -> str | None:
        """
        Write a key only if absent; see :meth:`Backend.create`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["create"] += 1
        return await self._run("create", lambda: self._create(key, path, data))

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        """
        Overwrite a key at ``version``; see :meth:`Backend.replace`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["replace"] += 1
        return await self._run("replace", lambda: self._replace(key, path, data, version))

    async def delete(self, key: str, version: str | None = None) -> bool:
        """
        Delete a key; see :meth:`Backend.delete`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["delete"] += 1
        return await self._run("delete", lambda: self._delete(key, path, version))

    async def list(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """
        List keys under ``prefix``; see :meth:`Backend.list`.

        Only the folder that ``prefix`` ends in (and folders below it) is read, so listing
        ``schedule/`` or ``runs/r1/log/`` does not walk the rest of the tree.
        """
        self.requests["list"] += 1
        return await self._run("list", lambda: self._list(prefix, after, limit))

    async def list_before(
        self, prefix: str, before: str | None, *, after: str | None = None, limit: int = 1000
    ) -> builtins.list[str]:
        """
        List keys under ``prefix`` before ``before``; see :meth:`Backend.list_before`.

        Folders that lie wholly from ``before`` on are not opened, so listing a schedule
        index up to now reads no folder of the future; empty folders wholly before it are
        removed (a writer that loses its folder that way makes it again).
        """
        self.requests["list"] += 1
        return await self._run("list", lambda: self._list(prefix, after, limit, before))

    async def prune(self, prefix: str) -> None:
        """Remove the folders under ``prefix`` (and its own) that hold no file."""
        folder = self._path(prefix.rstrip("/"))
        await self._run("prune", lambda: _remove_empty_folders(folder))

    # -- helpers run on the event loop -------------------------------------------------

    def _path(self, key: str) -> str:
        problem = key_problem(key)
        if problem is not None:
            raise ValueError(f"illegal key {key!r}: {problem}")
        return f"{self.root}/{key}"

    async def _run(self, operation: str, call: Callable[[], _T]) -> _T:
        # One thread hop per operation: measured faster than a hop per system call.
        try:
            return await anyio.to_thread.run_sync(call)
        except OSError as exc:
            if exc.errno in UNAVAILABLE:
                raise BackendUnavailable(self.name, operation, str(exc)) from exc
            if exc.errno in REFUSED:
                raise BackendRefused(self.name, operation, str(exc)) from exc
            if problem := root_problem(self.root):  # the folder itself: not a run's fault
                raise BackendRefused(self.name, operation, problem) from exc
            raise

    # -- helpers run in a worker thread ------------------------------------------------

    def _get(self, path: str) -> Entry | None:
        data = read_file(path)
        return None if data is None else (data, content_version(data))

    def _create(self, key: str, path: str, data: bytes) -> str | None:
        temp = self._write_temp(data)
        try:
            self._with_parents(key, lambda: os.link(temp, path))
        except FileExistsError:
            if os.path.isdir(path):
                raise self._conflict(key) from None
            return None
        except NotADirectoryError as exc:
            raise self._conflict(key) from exc
        finally:
            unlink_quietly(temp)
        self._sync_dir(os.path.dirname(path))
        return content_version(data)

    def _put(self, key: str, path: str, data: bytes) -> str:
        with self._locked(key):
            self._install(key, path, data)
        return content_version(data)

    def _replace(self, key: str, path: str, data: bytes, version: str) -> str | None:
        with self._locked(key):
            current = read_file(path)
            if current is None or content_version(current) != version:
                return None
            self._install(key, path, data)
        return content_version(data)

    def _delete(self, key: str, path: str, version: str | None) -> bool:
        with self._locked(key):
            if version is not None:
                current = read_file(path)
                if current is None or content_version(current) != version:
                    return False
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return False
            self._sync_dir(os.path.dirname(path))
        return True

    def _list(
        self, prefix: str, after: str | None, limit: int, before: str | None = None
    ) -> builtins.list[str]:
        head, slash, partial = prefix.rpartition("/")
        if limit <= 0 or "\0" in partial or (slash and key_problem(head) is not None):
            return []  # no legal key starts with this prefix
        folder = f"{self.root}/{head}" if slash else self.root
        keys: list[str] = []
        for key in _walk(self, folder, head + slash, partial, after, before):
            keys.append(key)
            if len(keys) == limit:
                break
        return keys

    def _write_temp(self, data: bytes) -> str:
        temp = f"{self._tmp}/{secrets.token_hex(16)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o666)
        except FileNotFoundError:
            os.makedirs(self._tmp, exist_ok=True)
            fd = os.open(temp, flags, 0o666)
        try:
            with open(fd, "wb") as file:
                file.write(data)
                file.flush()
                if self.fsync:
                    os.fsync(fd)
        except BaseException:
            unlink_quietly(temp)
            raise
        return temp

    def _install(self, key: str, path: str, data: bytes) -> None:
        """Atomically make ``path`` hold ``data``; the caller holds the key's lock."""
        temp = self._write_temp(data)
        try:
            self._with_parents(key, lambda: os.replace(temp, path))
        except (NotADirectoryError, IsADirectoryError) as exc:
            unlink_quietly(temp)
            raise self._conflict(key) from exc
        except BaseException:
            unlink_quietly(temp)
            raise
        self._sync_dir(os.path.dirname(path))

    def _with_parents(self, key: str, write: Callable[[], None]) -> None:
        """
        ``write`` the key's file, making its folders if they are missing, and again if a
        listing removed one as empty meanwhile (:meth:`list_before`).
        """
        for attempt in range(_REMAKES + 1):
            try:
                return write()
            except FileNotFoundError:
                if attempt == _REMAKES:
                    raise
            with contextlib.suppress(FileNotFoundError):  # a parent removed as it was made
                self._make_parents(key)

    def _make_parents(self, key: str) -> None:
        os.makedirs(self.root, exist_ok=True)
        folder = self.root
        for part in key.split("/")[:-1]:
            parent, folder = folder, f"{folder}/{part}"
            try:
                os.mkdir(folder)
            except FileExistsError:
                continue
            # The new folder exists durably only once its parent's entry is flushed.
            self._sync_dir(parent)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        stripe = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest())
        lock = f"{self._locks}/{stripe % _LOCK_STRIPES:03x}"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(lock, flags, 0o666)
        except FileNotFoundError:
            os.makedirs(self._locks, exist_ok=True)
            fd = os.open(lock, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
            yield
        finally:
            os.close(fd)

    def _sync_dir(self, path: str) -> None:
        if self.fsync:
            fsync_dir(path)

    def _conflict(self, key: str) -> ValueError:
        return ValueError(
            f"key {key!r} cannot be stored by the files backend: a key and keys below it "
            "(like 'a/b' and 'a/b/c') cannot both exist"
        )


def _walk(
    store: FSBackend,
    folder: str,
    base: str,
    partial: str,
    after: str | None,
    before: str | None,
    inner: bool = False,
) -> Iterator[str]:
    """
    Keys under ``folder`` (named ``base`` + entry) whose entry name starts with
    ``partial``, greater than ``after`` and less than ``before``, in order. An
    ``inner`` folder found empty and wholly before ``before`` is removed.

    A subfolder ``x`` sorts as ``x/``: every key under it starts with that, and no
    entry name contains ``/``, so comparing the entries' ``x/`` with file names orders
    whole keys correctly (``x-1`` < ``x/a``, since ``-`` < ``/``).
    """
    candidates: list[tuple[str, bool]] = []
    empty = True
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name, empty = entry.name, False
                if not name.startswith(partial) or (not base and name in RESERVED):
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                full = base + name + "/" if is_dir else base + name
                # Skip what lies wholly at or before `after`; enter a folder `after` is in.
                if after is not None and full <= after and not (is_dir and after.startswith(full)):
                    continue
                if before is not None and full >= before:  # and all keys under it
                    continue
                candidates.append((full, is_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    if empty and inner and before is not None and not before.startswith(base):
        with contextlib.suppress(OSError):  # not empty any more, or gone
            os.rmdir(folder)
    # A heap rather than a sort: a page of `limit` keys from a big folder is O(n).
    heapq.heapify(candidates)
    while candidates:
        full, is_dir = heapq.heappop(candidates)
        if is_dir:
            yield from _walk(store, f"{store.root}/{full[:-1]}", full, "", after, before, True)
        else:
            yield full


def _remove_empty_folders(top: str) -> None:
    """Remove ``top`` and the folders below it that hold no file, deepest first."""
    for folder, _, _ in sorted(os.walk(top), key=lambda found: -len(found[0])):
        try:
            os.rmdir(folder)
        except OSError:  # not empty (a file, or a writer got there first), or gone
            continue
