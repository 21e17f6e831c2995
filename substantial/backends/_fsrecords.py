"""
The files backend's keys that live in record files (:mod:`._records`): reads, the
create-if-absent append, and the rarer put, replace and delete, run in a worker thread.

A key of a record family may also exist as a file of its own, written before record
files existed (``runs/r/log/000000000003``): reads fall back to it, listings merge it,
deletes remove it, and a create of its number fails as it always did. Every writer of
record keys must run this code: a process of an older version would create those files
without looking at the record file.
"""

from __future__ import annotations

import bisect
import heapq
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager

from substantial.backends._files import content_version, read_file, unlink_quietly
from substantial.backends._records import (
    DROP,
    SET,
    Families,
    Records,
    RecordsCache,
    append_frame,
    file_of,
    record_name,
    write_records,
)
from substantial.backends.base import Entry

__all__ = ["RecordKeys"]

#: A record file is rewritten without its dead frames once they are this many bytes and
#: outweigh the live ones.
VACUUM_BYTES = 64 << 10

#: ``decide(current)``: whether a write goes ahead, given the key's current bytes.
Decide = Callable[[bytes | None], bool]


class RecordKeys:
    """
    Record-file operations of one files backend; each runs in a worker thread.

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

    def read(self, rel: str, call: Callable[[Records | None], object]) -> object:
        path = f"{self.root}/{rel}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return call(None)
        try:
            return self.cache.use(path, fd, call)
        finally:
            os.close(fd)

    def get_keys(self, keys: Sequence[str], paths: list[str]) -> list[Entry | None]:
        """Read ``keys`` (at ``paths``): each record file once, other keys as files."""
        results: list[Entry | None] = [None] * len(keys)
        records: dict[str, list[tuple[int, int, str]]] = {}
        for index, (key, path) in enumerate(zip(keys, paths, strict=True)):
            if (record := self.families.locate(key)) is not None:
                records.setdefault(record[0], []).append((index, record[1], path))
            elif (data := read_file(path)) is not None:
                results[index] = (data, content_version(data))
        for rel, wanted in records.items():
            found = self.get_many(rel, [(seq, path) for _, seq, path in wanted])
            for (index, _, _), entry in zip(wanted, found, strict=True):
                results[index] = entry
        return results

    def get_many(self, rel: str, wanted: list[tuple[int, str]]) -> list[Entry | None]:
        """The entries of records ``seq`` (each with its own-file ``legacy`` path)."""

        def pick(records: Records | None) -> list[bytes | None]:
            data = {} if records is None else records.data
            return [data.get(seq) for seq, _ in wanted]

        found = self.read(rel, pick)
        assert isinstance(found, list)
        entries: list[Entry | None] = []
        for data, (_, legacy) in zip(found, wanted, strict=True):
            if data is None:
                data = read_file(legacy)
            entries.append(None if data is None else (data, content_version(data)))
        return entries

    def keys(self, head: str, partial: str, after: str | None) -> Iterator[str]:
        """The record keys of key folder ``head``, ascending, after ``after``."""
        seqs = self.read(file_of(head), lambda records: [] if records is None else records.seqs())
        assert isinstance(seqs, list)
        base = f"{head}/"
        start = 0
        if after is not None:
            start = bisect.bisect_right(seqs, after, key=lambda seq: base + record_name(seq))
        for seq in seqs[start:]:
            name = record_name(seq)
            if name.startswith(partial):
                yield base + name

    def merged(
        self, files: Iterable[str], head: str, partial: str, after: str | None
    ) -> Iterator[str]:
        """The keys of folder ``head``: its own files' and its record file's, merged."""
        last = None
        for key in heapq.merge(files, self.keys(head, partial, after)):
            if key != last:
                yield key
            last = key

    # -- writes -----------------------------------------------------------------------

    def create(self, rel: str, seq: int, data: bytes, legacy: str) -> str | None:
        written = self._write(rel, seq, legacy, SET, data, True, lambda current: current is None)
        return content_version(data) if written else None

    def put(self, rel: str, seq: int, data: bytes, legacy: str, durable: bool) -> str:
        self._write(rel, seq, legacy, SET, data, durable, lambda current: True)
        return content_version(data)

    def replace(
        self, rel: str, seq: int, data: bytes, version: str, legacy: str, durable: bool
    ) -> str | None:
        written = self._write(rel, seq, legacy, SET, data, durable, _at_version(version))
        return content_version(data) if written else None

    def delete(self, rel: str, seq: int, version: str | None, legacy: str, durable: bool) -> bool:
        decide = _at_version(version) if version is not None else _present
        return self._write(rel, seq, legacy, DROP, b"", durable, decide)

    def _write(
        self, rel: str, seq: int, legacy: str, kind: int, data: bytes, durable: bool, decide: Decide
    ) -> bool:
        path = f"{self.root}/{rel}"
        with self._locked(rel):
            fd = self._open(rel, path)
            try:
                records: Records | None = self.cache.use(path, fd, lambda found: found)
                current = None if records is None else records.data.get(seq)
                on_disk = read_file(legacy)
                if not decide(current if current is not None else on_disk):
                    return False
                if kind == DROP and records is not None and current is not None:
                    if len(records.data) == 1:  # the last record: remove the file
                        unlink_quietly(path)
                        self.cache.forget(path)
                        self._sync_dir(os.path.dirname(path))
                    else:
                        self._append(path, fd, records, seq, kind, data, durable)
                        self._vacuum(path, records, seq)
                elif kind == SET:
                    self._append(path, fd, records, seq, kind, data, durable)
            finally:
                os.close(fd)
            if on_disk is not None and (kind == DROP or current is None):
                unlink_quietly(legacy)  # the record file holds it now, or it is deleted
                if durable:
                    self._sync_dir(os.path.dirname(legacy))
        return True

    def _append(
        self,
        path: str,
        fd: int,
        records: Records | None,
        seq: int,
        kind: int,
        data: bytes,
        durable: bool,
    ) -> None:
        append_frame(fd, None if records is None else records.end, seq, kind, data)
        if self.fsync and durable:
            os.fdatasync(fd)
        if records is None:  # a new file: its folder entry must last, too
            self._sync_dir(os.path.dirname(path))

    def _vacuum(self, path: str, records: Records, dropped: int) -> None:
        """Rewrite the file without its dead frames once they outweigh the live ones."""
        live = {seq: data for seq, data in records.data.items() if seq != dropped}
        size = sum(len(data) for data in live.values())
        if records.end - size < max(VACUUM_BYTES, size):
            return
        temp = f"{self.tmp}/{secrets.token_hex(16)}"
        try:
            write_records(temp, live, self.fsync)
        except FileNotFoundError:
            os.makedirs(self.tmp, exist_ok=True)
            write_records(temp, live, self.fsync)
        try:
            os.replace(temp, path)
        except BaseException:
            unlink_quietly(temp)
            raise
        self.cache.forget(path)
        self._sync_dir(os.path.dirname(path))

    def _open(self, rel: str, path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o666)
        except FileNotFoundError:
            self._make_parents(rel)
            return os.open(path, flags, 0o666)


def _present(current: bytes | None) -> bool:
    return current is not None


def _at_version(version: str) -> Decide:
    return lambda current: current is not None and content_version(current) == version
