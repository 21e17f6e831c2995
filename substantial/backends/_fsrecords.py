"""
The files backend's keys that live in record files (:mod:`._records`): reads, the
create-if-absent append, and the rarer put, replace and delete, run in a worker thread.

A log begun before record files is a folder of one file per key (``runs/r/log/``); its
record file would have the folder's name, so every operation here raises
:class:`LegacyLog` for it and the backend keeps that log one file per key, as it was
written. A process of an older version cannot write into a record-file log: the file
stands where it would make the folder, so its writes fail (``NotADirectoryError``)
instead of bypassing the record file's lock.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from substantial.backends._files import (
    content_version,
    fsync_removed,
    read_file,
    replace_file,
    unlink_quietly,
    with_folders,
)
from substantial.backends._records import (
    DROP,
    FRAME,
    HEADER,
    SET,
    Damaged,
    Families,
    Records,
    RecordsCache,
    append_frame,
    record_name,
    records_file,
)
from substantial.backends.base import Entry
from substantial.errors import CorruptLog

__all__ = ["LegacyLog", "RecordKeys"]

#: A record file is rewritten without its dead frames once they are this many bytes and
#: outweigh the live ones.
VACUUM_BYTES = 64 << 10

_T = TypeVar("_T")
#: ``decide(current)``: whether a write goes ahead, given the record's current bytes.
Decide = Callable[[bytes | None], bool]


class LegacyLog(Exception):
    """The log is a folder of one file per key, written before record files."""


class RecordKeys:
    """
    Record-file operations of one files backend; each runs in a worker thread. ``rel``
    is a record file's path relative to the root (``runs/r/log``), ``seq`` a record's
    number in it.

    :param locked: the backend's lock of a (relative) path, held across each write
    :param make_parents: makes the folders a relative path needs, durably
    :param sync_dir: flushes a folder (a no-op with ``fsync=False``)
    """

    def __init__(
        self,
        root: str,
        tmp: str,
        families: Families,
        *,
        fsync: bool,
        locked: Callable[[str], AbstractContextManager[None]],
        make_parents: Callable[[str], None],
        sync_dir: Callable[[str], None],
    ) -> None:
        self.root, self.tmp, self.fsync, self.families = root, tmp, fsync, families
        self.cache = RecordsCache()
        self._locked, self._make_parents, self._sync_dir = locked, make_parents, sync_dir

    # -- reads ------------------------------------------------------------------------

    def read(
        self,
        rel: str,
        call: Callable[[Records | None], _T],
        *,
        again: bool = False,
        prefix: bool = False,
    ) -> _T:
        """
        ``call`` the file's current parse (None: no file, or not begun).

        :param again: the second look at a file the first found damaged
        :param prefix: of a damaged file, the intact records before the damage
        :raises LegacyLog: if ``rel`` is a folder
        :raises CorruptLog: if the file is damaged (and not ``prefix``)
        """
        path = f"{self.root}/{rel}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return call(None)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise LegacyLog(rel)
            if again:
                return self._use(rel, fd, call)
            if prefix:
                return self.cache.use(path, fd, call, prefix=True)
            with suppress(Damaged):
                return self.cache.use(path, fd, call)
        finally:
            os.close(fd)
        # Read without the lock, a writer cutting a torn tail and appending can be seen
        # half-way, which looks like damage: look again while no writer is at work (a
        # reader that may not write the lock folder looks again without it).
        with ExitStack() as stack:
            with suppress(OSError):
                stack.enter_context(self._locked(rel))
            self.cache.forget(path)
            return self.read(rel, call, again=True)

    def _use(self, rel: str, fd: int, call: Callable[[Records | None], _T]) -> _T:
        """``cache.use``: a damaged file fails the run it belongs to, and is left as is."""
        try:
            return self.cache.use(f"{self.root}/{rel}", fd, call)
        except Damaged as exc:
            detail = f"the record file {rel!r} under {self.root!r} is damaged: {exc}"
            raise CorruptLog(self.families.owner(rel), rel, detail) from None

    def get_keys(self, keys: Sequence[str], paths: list[str]) -> list[Entry | None]:
        """Read ``keys`` (at ``paths``): each record file once, other keys as files."""
        results: list[Entry | None] = [None] * len(keys)
        records: dict[str, list[tuple[int, int]]] = {}
        for index, key in enumerate(keys):
            if (record := self.families.locate(key)) is not None:
                records.setdefault(record[0], []).append((index, record[1]))
            else:
                results[index] = _entry(read_file(paths[index]))
        for rel, wanted in records.items():
            try:
                found = self.read(rel, partial(_pick, wanted=wanted))
            except LegacyLog:
                found = [read_file(paths[index]) for index, _ in wanted]
            for (index, _), data in zip(wanted, found, strict=True):
                results[index] = _entry(data)
        return results

    def keys(
        self, rel: str, start_of_name: str, after: str | None, *, prefix: bool = False
    ) -> Iterator[str]:
        """
        The keys of record file ``rel`` whose name starts with ``start_of_name``, after
        ``after``, ascending.

        :param prefix: of a damaged file, those of the intact records before the damage,
            or, if none is, record 0's (reading it raises): a listing of more than this
            log goes past the damage and still sees the run
        :raises LegacyLog: if ``rel`` is a folder
        :raises CorruptLog: if the file is damaged (and not ``prefix``)
        """

        def listed(records: Records | None) -> list[int]:
            return [] if records is None else records.seqs()

        try:
            seqs = self.read(rel, listed)
        except CorruptLog:
            if not prefix:
                raise
            seqs = self.read(rel, listed, prefix=True) or [0]
        base = f"{rel}/"
        start = 0
        if after is not None:
            start = bisect.bisect_right(seqs, after, key=lambda seq: base + record_name(seq))
        return (
            base + name for name in map(record_name, seqs[start:]) if name.startswith(start_of_name)
        )

    # -- writes (each raises LegacyLog if ``rel`` is a folder) ---------------------------

    def create(self, rel: str, seq: int, data: bytes) -> str | None:
        """Append record ``seq`` unless it exists: always durable, a log's fencing point."""
        written = self._write(rel, seq, SET, data, True, lambda current: current is None)
        return content_version(data) if written else None

    def put(self, rel: str, seq: int, data: bytes, durable: bool) -> str:
        self._write(rel, seq, SET, data, durable, lambda current: True)
        return content_version(data)

    def replace(self, rel: str, seq: int, data: bytes, version: str, durable: bool) -> str | None:
        written = self._write(rel, seq, SET, data, durable, _at_version(version))
        return content_version(data) if written else None

    def delete(self, rel: str, seq: int, version: str | None, durable: bool) -> bool:
        decide = _at_version(version) if version is not None else _present
        return self._write(rel, seq, DROP, b"", durable, decide)

    def _write(
        self, rel: str, seq: int, kind: int, data: bytes, durable: bool, decide: Decide
    ) -> bool:
        path = f"{self.root}/{rel}"
        with self._locked(rel):
            fd = self._open(rel, path)
            try:
                # What the file holds, taken under the cache's lock: another thread of
                # this process may be parsing the same file (it cannot grow: we hold
                # the file's lock).
                state = self._use(rel, fd, partial(_State.of, seq=seq, kind=kind))
                if not decide(state.current):
                    return False
                if kind == DROP and state.count == 1:
                    unlink_quietly(path)  # the last record: no file, so folders can go
                    self.cache.forget(path)
                    if durable and self.fsync:
                        fsync_removed(path, self.root)
                    return True
                append_frame(fd, state.end, seq, kind, data)
                if self.fsync and durable:
                    os.fdatasync(fd)
                if state.end is None:  # a new file: its folder entry must last, too
                    self._sync_dir(os.path.dirname(path))
                elif state.live is not None:
                    with suppress(OSError):  # the drop is done; the next one tries again
                        self._vacuum(path, state.live)
            finally:
                os.close(fd)
        return True

    def _vacuum(self, path: str, live: dict[int, bytes]) -> None:
        """Rewrite the file with only its ``live`` records (and a new file id)."""
        replace_file(self.tmp, path, records_file(live), self.fsync)
        self.cache.forget(path)
        self._sync_dir(os.path.dirname(path))

    def _open(self, rel: str, path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return with_folders(
                lambda: os.open(path, flags, 0o666), lambda: self._make_parents(rel)
            )
        except IsADirectoryError:
            raise LegacyLog(rel) from None


@dataclass(frozen=True)
class _State:
    """A record file as a writer needs it, for the write of ``seq``."""

    #: where its complete frames end (None: no file yet, or not begun)
    end: int | None
    #: record ``seq``'s bytes
    current: bytes | None
    #: how many records it holds
    count: int
    #: for a drop that leaves dead frames outweighing the live ones: the records left
    live: dict[int, bytes] | None

    @classmethod
    def of(cls, records: Records | None, *, seq: int, kind: int) -> _State:
        if records is None:
            return cls(None, None, 0, None)
        current, live = records.data.get(seq), None
        if kind == DROP and current is not None:
            # Live bytes after the drop, frame headers included: the rest of the file is
            # dead (replaced or dropped records), and the file is rewritten once the dead
            # outweigh the live (else each drop of a file of small records rewrites it).
            left = records.size - len(current) + FRAME.size * (len(records.data) - 1)
            if records.end - HEADER.size - left >= max(VACUUM_BYTES, left):
                live = {other: data for other, data in records.data.items() if other != seq}
        return cls(records.end, current, len(records.data), live)


def _pick(records: Records | None, wanted: list[tuple[int, int]]) -> list[bytes | None]:
    data = {} if records is None else records.data
    return [data.get(seq) for _, seq in wanted]


def _entry(data: bytes | None) -> Entry | None:
    return None if data is None else (data, content_version(data))


def _present(current: bytes | None) -> bool:
    return current is not None


def _at_version(version: str) -> Decide:
    return lambda current: current is not None and content_version(current) == version
