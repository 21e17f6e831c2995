"""
Record files: the files backend keeps the keys of an *append log family* (by default a
run's log segments, ``runs/{run}/log/{seq:012d}``) as frames of one append-only file per
folder, named as the folder (``runs/{run}/log``), so that writing one costs one
``fdatasync`` instead of a temporary file, an ``fsync``, a link and a folder ``fsync``.

A record file is a header (magic and a random file id) and then frames::

    length:u32  crc32:u32  seq:u64  kind:u8  data[length]      (little-endian)

``kind`` is :data:`SET` (the record ``seq`` now holds ``data``) or :data:`DROP` (record
``seq`` was deleted). The crc covers ``seq``, ``kind`` and ``data``. Readers take the
frames that are complete and whose crc matches, up to the first that is not: a writer
that died mid-append leaves a torn tail, which readers ignore and the next writer (under
the lock) cuts off before it appends. So a frame is all there or not there.

Only the last frame can be torn, so a bad frame with an intact frame after it, or a file
that does not begin with the header (unless it is zeros with no intact frame after
them, or the start of a header), is damage: readers and writers raise :class:`Damaged`
and leave the file as it is, instead of cutting off the records after it.

Writers hold the folder's lock (the files backend's ``flock`` stripes; released by the
kernel when a process dies) while they check and append, which is what makes ``create``
of a record create-if-absent across processes. A file is only ever appended to, or
replaced whole (``rename``) by a rewrite that drops dead frames; a rewrite gets a new
file id, so a reader's cached parse of the file (keyed by file id) stays valid for the
prefix it covers.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "DROP",
    "FRAME",
    "HEADER",
    "SEQ_DIGITS",
    "SET",
    "Damaged",
    "Families",
    "Records",
    "RecordsCache",
    "append_frame",
    "frame",
    "header",
    "record_name",
    "records_file",
]

MAGIC = b"SUBREC01"
HEADER = struct.Struct("<8s16s")
FRAME = struct.Struct("<IIQB")
SET, DROP = 0, 1
SEQ_DIGITS = 12
_MAX_SEQ = 10**SEQ_DIGITS
_T = TypeVar("_T")


class Damaged(Exception):
    """A record file is damaged where no writer that died mid-append can have torn it."""


def header(file_id: bytes) -> bytes:
    return HEADER.pack(MAGIC, file_id)


def frame(seq: int, kind: int, data: bytes) -> bytes:
    tail = FRAME.pack(0, 0, seq, kind)[8:] + data
    return struct.pack("<II", len(data), zlib.crc32(tail)) + tail


@dataclass
class Records:
    """A record file as parsed: its live records and where its complete frames end."""

    file_id: bytes
    end: int = HEADER.size
    data: dict[int, bytes] = field(default_factory=dict)
    #: bytes of the live records' data
    size: int = 0
    _order: list[int] | None = None

    def extend(self, buf: bytes) -> None:
        """Apply the complete, intact frames at the start of ``buf`` (read at ``end``)."""
        view = memoryview(buf)
        at, size = 0, len(buf)
        unpack, crc32, data, size_of = FRAME.unpack_from, zlib.crc32, self.data, FRAME.size
        live = self.size
        while at + size_of <= size:
            length, crc, seq, kind = unpack(view, at)
            start = at + size_of
            stop = start + length
            if stop > size or kind > DROP or crc32(view[at + 8 : stop]) != crc:
                break
            if seq in data:
                live -= len(data.pop(seq))
            if kind == SET:
                data[seq] = buf[start:stop]
                live += length
            at = stop
        if at:
            self.end += at
            self.size = live
            self._order = None

    def seqs(self) -> list[int]:
        """The live record numbers, ascending (kept until the next change)."""
        if self._order is None:
            self._order = sorted(self.data)
        return self._order


class RecordsCache:
    """
    Parsed record files of this process, by path, least recently used first out once
    they hold more than ``limit`` bytes. An entry is valid for a file with the same file
    id and at least its length: such a file only grew since.
    """

    def __init__(self, limit: int = 64 << 20, files: int = 1024) -> None:
        self._lock = threading.Lock()
        self._files: OrderedDict[str, Records] = OrderedDict()
        self._limit, self._most = limit, files
        self._total = 0  # the ends of the files held

    def use(
        self, path: str, fd: int, call: Callable[[Records | None], _T], *, prefix: bool = False
    ) -> _T:
        """
        Bring the parse of the open file ``fd`` up to date and ``call`` it, locked.

        :param prefix: on damage, ``call`` the intact records before it, instead of
            raising :class:`Damaged`
        """
        with self._lock:
            records = self._files.get(path)
            head = os.pread(fd, HEADER.size, 0)
            size = os.fstat(fd).st_size
            if len(head) < HEADER.size or head[:8] != MAGIC:
                self._drop(path)
                if not prefix and (problem := _begun_badly(_pread_all(fd, size, 0))):
                    raise Damaged(problem)
                return call(None)  # not begun: its first writer died writing the header
            if records is None or records.file_id != head[8:] or size < records.end:
                self._drop(path)
                records = Records(head[8:])
                self._total += records.end
                self._files[path] = records
            if size > records.end:
                before = records.end
                tail = _pread_all(fd, size - records.end, records.end)
                records.extend(tail)
                self._total += records.end - before
                if (
                    records.end < size
                    and not prefix
                    and not torn(memoryview(tail)[records.end - before :])
                ):
                    raise Damaged(
                        f"the frame at byte {records.end} fails its check and intact frames "
                        "follow it: a torn write can only be the last"
                    )
            self._files.move_to_end(path)
            while (self._total > self._limit or len(self._files) > self._most) and len(
                self._files
            ) > 1:
                self._drop(next(iter(self._files)))
            return call(records)

    def forget(self, path: str) -> None:
        with self._lock:
            self._drop(path)

    def _drop(self, path: str) -> None:
        records = self._files.pop(path, None)
        if records is not None:
            self._total -= records.end


def torn(rest: memoryview) -> bool:
    """
    Whether ``rest``, the bytes from a record file's first bad frame on, can be the torn
    append of a writer that died before it was acknowledged: no intact frame begins in
    it after its first byte. (A kill leaves a prefix of the frame; a power loss may also
    leave zeros where some of its pages were never written.)
    """
    if not rest[1:].tobytes().strip(b"\0"):
        return True  # zeros, at once: no frame is all zeros (its crc would not match)
    return not _intact_frame(rest, 1)


def _begun_badly(data: bytes) -> str | None:
    """
    Why a file that does not begin with the record-file header is damage; None when its
    first writer died writing it: the start of the header, or zeros (a lost page) with no
    intact frame after them.
    """
    if (len(data) < HEADER.size and MAGIC.startswith(data[:8])) or not data.strip(b"\0"):
        return None
    if not data[: HEADER.size].strip(b"\0"):
        if not _intact_frame(memoryview(data), HEADER.size):
            return None
        return "its header is zeros, and intact frames follow"
    return "it does not begin with the record-file header"


#: Where a frame may begin: a known kind, and a crc that is not zeros (one frame in 2**32
#: has such a crc: the scan misses it). A regex finds them at C speed, so a scan through
#: zeros or large data stays quick.
_MAY_BEGIN = re.compile(rb"(?=.{4}(?!\x00{4}).{12}[\x00\x01])", re.DOTALL)


def _intact_frame(view: memoryview, start: int) -> bool:
    """Whether an intact frame begins at ``start`` or after it (a scan for damage only)."""
    size, unpack, crc32 = len(view), FRAME.unpack_from, zlib.crc32
    for found in _MAY_BEGIN.finditer(view, start):
        at = found.start()
        length, crc, _, _ = unpack(view, at)
        stop = at + FRAME.size + length
        if stop <= size and crc32(view[at + 8 : stop]) == crc:
            return True
    return False


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class Families:
    """
    Which keys live in record files. A family is a pattern like ``runs/*/log/``: ``*``
    stands for one key component. A key is a record when it is a family folder followed
    by ``SEQ_DIGITS`` digits; the folder's record file has the folder's own name (so no
    key can have it, and a writer of an older version cannot put files below it).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [pattern.rstrip("/").split("/") for pattern in patterns]
        self._last = {pattern[-1] for pattern in self._patterns}
        self._known: dict[str, bool] = {}  # folder() of recent heads

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def folder(self, head: str) -> bool:
        """Whether ``head`` (``runs/r/log``) names a family's folder: a record file."""
        if head.rpartition("/")[2] not in self._last:
            return False
        known = self._known.get(head)
        if known is None:
            parts = head.split("/")
            known = any(_matches(parts, pattern) for pattern in self._patterns)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[head] = known
        return known

    def clash(self, key: str) -> str | None:
        """Why ``key``, not a record, cannot be stored: it is a log folder or below one."""
        if self.folder(key):
            return "it names a log folder, kept by the files backend as one file"
        head = key
        while "/" in head:
            head = head.rpartition("/")[0]
            if self.folder(head):
                return f"the log folder {head!r} holds only records named by {SEQ_DIGITS} digits"
        return None

    def owner(self, head: str) -> str:
        """What the first ``*`` of ``head``'s family stands for (``runs/r/log``: ``r``)."""
        parts = head.split("/")
        for pattern in self._patterns:
            if _matches(parts, pattern) and "*" in pattern:
                return parts[pattern.index("*")]
        return head

    def locate(self, key: str) -> tuple[str, int] | None:
        """The record file (relative path) and number of ``key``, if it is a record."""
        head, _, name = key.rpartition("/")
        if len(name) != SEQ_DIGITS or not name.isdigit() or not self.folder(head):
            return None
        return head, int(name)


def _matches(parts: list[str], pattern: list[str]) -> bool:
    return len(parts) == len(pattern) and all(
        want in ("*", part) for part, want in zip(parts, pattern, strict=True)
    )


def record_name(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}"


def append_frame(fd: int, end: int | None, seq: int, kind: int, data: bytes) -> None:
    """
    Append one frame to the open record file ``fd`` after its complete frames, which end
    at ``end`` (a torn tail after them is cut first); ``None``: start the file. The caller
    holds the file's lock.
    """
    body = frame(seq, kind, data)
    if end is None:
        body = header(secrets.token_bytes(16)) + body
        end = 0
    if os.fstat(fd).st_size != end:
        os.ftruncate(fd, end)  # a torn tail: its writer died, since we hold the lock
    try:
        _write_all(fd, body, end)
    except BaseException:
        os.ftruncate(fd, end)
        raise


def records_file(records: dict[int, bytes]) -> bytes:
    """The bytes of a new record file (a new file id) holding ``records``."""
    body = [header(secrets.token_bytes(16))]
    body.extend(frame(seq, SET, data) for seq, data in sorted(records.items()))
    return b"".join(body)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
