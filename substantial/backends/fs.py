"""
A backend on a local (or shared POSIX) file system: one file per key, except the keys
of append logs (a run's log segments), which are records of one file per log.

Layout under ``root``: key ``a/b/c`` is the file ``root/a/b/c``; ``root/.tmp/`` holds
files being written and ``root/.locks/`` the lock files, so neither name can start a key.
Key ``runs/r/log/000000000007`` is record 7 of the record file ``root/runs/r/log``
(:mod:`substantial.backends._records`), unless ``root/runs/r/log`` is a folder: a log
written one file per key, before record files, stays so.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import TypeVar

import anyio.to_thread

from substantial.backends._boot import BOOT_ID, Reboots
from substantial.backends._files import (
    LOCKS,
    REFUSED,
    TMP,
    UNAVAILABLE,
    content_version,
    fsync_dir,
    fsync_removed,
    key_problem,
    locked,
    make_empty,
    read_file,
    remove_empty_folders,
    root_problem,
    unlink_quietly,
    with_folders,
    write_temp,
)
from substantial.backends._fsrecords import LegacyLog, RecordKeys
from substantial.backends._fswalk import WalkScope, walk
from substantial.backends._records import Families
from substantial.backends.base import Backend, Entry
from substantial.errors import BackendRefused, BackendUnavailable

__all__ = ["FSBackend"]

_T = TypeVar("_T")

#: The key families the files backend keeps as records of one append-only file per
#: folder: the run log (``runs/{run}/log/{seq:012d}``, see ``substantial._store.keys``),
#: written once per step, create-if-absent, and read whole.
APPEND_LOGS = ("runs/*/log/",)


class FSBackend(Backend):
    """
    Keys as files under ``root``, safe to share between processes on one machine.

    ``create`` writes a temporary file and hard-links it to the key's name, which fails if
    the name exists; ``put``, ``replace`` and ``delete`` hold an ``flock`` on the key's lock
    file while they check the version and ``os.replace`` or unlink the file. A version is
    a hash of the content, so any process computes it from the file alone (and writing
    the same bytes again gives the same version).

    A key cannot also be a directory of other keys: with ``a/b`` stored, writing
    ``a/b/c`` raises :class:`ValueError` (and the other way round).

    Keys of the ``append_logs`` families (``runs/*/log/``: ``*`` is one key component)
    whose name is 12 digits are records of one file per folder instead: a ``create``
    appends one frame under the folder's lock and costs one ``fdatasync``; ``put``,
    ``replace`` and ``delete`` append too (a rewrite drops dead frames now and then).
    The record file takes the folder's name, so such a folder holds record keys only
    (``runs/r/log/x`` raises :class:`ValueError`).

    A write with ``durable=False`` (a hint the log can rebuild) is not flushed to disk.

    :param root: the folder holding the keys; created on first write
    :param fsync: flush files and directories to disk before a write returns. With
        ``fsync=False`` writes are faster but a power loss or kernel crash can lose or
        tear writes that were already reported done, which breaks the log's guarantees:
        use it only for tests and throwaway data
    :param append_logs: the key families kept as record files (every process sharing
        ``root`` must use the same)
    :param boot_id: the kernel's boot id file (:mod:`._boot`); None: flush starts, ends
    """

    name = "files"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        append_logs: Sequence[str] = APPEND_LOGS,
        boot_id: str | None = BOOT_ID,
    ) -> None:
        super().__init__()
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        self._tmp = os.path.join(self.root, TMP)
        self._locks = os.path.join(self.root, LOCKS)
        self._families = Families(append_logs)
        self._records = RecordKeys(
            self.root,
            self._tmp,
            self._families,
            fsync=fsync,
            locked=self._locked,
            make_parents=self._make_parents,
            sync_dir=self._sync_dir,
        )
        self._scope = WalkScope(self.root, self._families, self._records)
        if fsync and boot_id is not None:
            self.reboots = Reboots(self.root, self._tmp, self._locks, boot_id)

    def __repr__(self) -> str:
        return f"FSBackend({self.root!r}, fsync={self.fsync})"

    # -- the contract -------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """
        Read a key; see :meth:`Backend.get`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Read several keys in one worker-thread call; see :meth:`Backend.get_many`."""
        paths = [self._path(key) for key in keys]
        self.requests["get"] += len(paths)
        return await self._run("get", lambda: self._records.get_keys(keys, paths))

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> str:
        """
        Write a key unconditionally; see :meth:`Backend.put`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["put"] += 1
        return await self._run("put", lambda: self._put(key, path, data, durable))

    async def create(self, key: str, data: bytes, *, durable: bool = True) -> str | None:
        """
        Write a key only if absent; see :meth:`Backend.create`. A record key's create is
        always durable: it is a log's fencing point.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["create"] += 1
        return await self._run("create", lambda: self._create(key, path, data, durable))

    async def replace(
        self, key: str, data: bytes, version: str, *, durable: bool = True
    ) -> str | None:
        """
        Overwrite a key at ``version``; see :meth:`Backend.replace`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["replace"] += 1
        return await self._run("replace", lambda: self._replace(key, path, data, version, durable))

    async def delete(self, key: str, version: str | None = None, *, durable: bool = True) -> bool:
        """
        Delete a key; see :meth:`Backend.delete`.

        :raises ValueError: if ``key`` is illegal or clashes with a stored key
        """
        path = self._path(key)
        self.requests["delete"] += 1
        return await self._run("delete", lambda: self._delete(key, path, version, durable))

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

        Folders wholly from ``before`` on are not opened (a poll reads no future folder);
        empty ones wholly before it are removed (a writer remakes a folder it loses).
        """
        self.requests["list"] += 1
        return await self._run("list", lambda: self._list(prefix, after, limit, before))

    async def prune(self, prefix: str) -> None:
        """Remove the folders under ``prefix`` (and its own) that hold no file."""
        folder = self._path(prefix.rstrip("/"))
        await self._run("prune", lambda: remove_empty_folders(folder))

    # -- helpers run on the event loop -------------------------------------------------

    def _path(self, key: str) -> str:
        problem = key_problem(key)
        if problem is None and self._families.locate(key) is None:
            problem = self._families.clash(key)
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

    def _create(self, key: str, path: str, data: bytes, durable: bool) -> str | None:
        if (record := self._families.locate(key)) is not None:
            with suppress(LegacyLog):
                return self._records.create(*record, data)
        # An empty file has nothing to tear: it is made in place, one fsync (its folder's).
        temp = self._write_temp(data, durable) if data else ""
        try:
            self._with_parents(key, lambda: os.link(temp, path) if temp else make_empty(path))
        except FileExistsError:
            if os.path.isdir(path):
                raise self._conflict(key) from None
            return None
        except NotADirectoryError as exc:
            raise self._conflict(key) from exc
        finally:
            if temp:
                unlink_quietly(temp)
        if durable:
            self._sync_dir(os.path.dirname(path))
        return content_version(data)

    def _put(self, key: str, path: str, data: bytes, durable: bool) -> str:
        if (record := self._families.locate(key)) is not None:
            with suppress(LegacyLog):
                return self._records.put(*record, data, durable)
        with self._locked(key):
            self._install(key, path, data, durable)
        return content_version(data)

    def _replace(self, key: str, path: str, data: bytes, version: str, durable: bool) -> str | None:
        if (record := self._families.locate(key)) is not None:
            with suppress(LegacyLog):
                return self._records.replace(*record, data, version, durable)
        with self._locked(key):
            current = read_file(path)
            if current is None or content_version(current) != version:
                return None
            self._install(key, path, data, durable)
        return content_version(data)

    def _delete(self, key: str, path: str, version: str | None, durable: bool) -> bool:
        if (record := self._families.locate(key)) is not None:
            with suppress(LegacyLog):
                return self._records.delete(*record, version, durable)
        with self._locked(key):
            if version is not None:
                current = read_file(path)
                if current is None or content_version(current) != version:
                    return False
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return False
            if durable and self.fsync:
                fsync_removed(path, self.root)
        return True

    def _list(
        self, prefix: str, after: str | None, limit: int, before: str | None = None
    ) -> builtins.list[str]:
        head, slash, partial = prefix.rpartition("/")
        if limit <= 0 or "\0" in partial or (slash and key_problem(head) is not None):
            return []  # no legal key starts with this prefix
        folder = f"{self.root}/{head}" if slash else self.root
        found = walk(self._scope, folder, head + slash, partial, after, before)
        if slash and self._families.folder(head):
            with suppress(LegacyLog):
                found = self._records.keys(head, partial, after)
        keys: list[str] = []
        for key in found:
            keys.append(key)
            if len(keys) == limit:
                break
        return keys

    def _install(self, key: str, path: str, data: bytes, durable: bool) -> None:
        """Atomically make ``path`` hold ``data``; the caller holds the key's lock."""
        if not data:
            with suppress(FileExistsError):  # else replaced whole: a reader may be reading it
                self._with_parents(key, lambda: make_empty(path))
                if durable:
                    self._sync_dir(os.path.dirname(path))
                return
        temp = self._write_temp(data, durable)
        try:
            self._with_parents(key, lambda: os.replace(temp, path))
        except (NotADirectoryError, IsADirectoryError) as exc:
            unlink_quietly(temp)
            raise self._conflict(key) from exc
        except BaseException:
            unlink_quietly(temp)
            raise
        if durable:
            self._sync_dir(os.path.dirname(path))

    def _with_parents(self, key: str, write: Callable[[], None]) -> None:
        with_folders(write, lambda: self._make_parents(key))

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

    def _write_temp(self, data: bytes, durable: bool) -> str:
        return write_temp(self._tmp, data, self.fsync and durable)

    def _locked(self, key: str) -> AbstractContextManager[None]:
        return locked(self._locks, key)

    def _sync_dir(self, path: str) -> None:
        if self.fsync:
            fsync_dir(path)

    def _conflict(self, key: str) -> ValueError:
        return ValueError(
            f"key {key!r} cannot be stored by the files backend: a key and keys below it "
            "(like 'a/b' and 'a/b/c') cannot both exist"
        )
