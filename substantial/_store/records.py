"""
Decoding stored records. Every record is input: one that does not parse, or a segment
that names another run or a newer format, is a :class:`~substantial.errors.CorruptLog`
for that run only.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError

from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["FORMAT_VERSION", "check_segment", "parse_record"]

#: The segment format this code writes; segments from a newer format are refused.
FORMAT_VERSION = 1

_M = TypeVar(
    "_M", pb.Segment, pb.InboxEntry, pb.RunMeta, pb.Lease, pb.ForkRecord, pb.CronSchedule, pb.Limit
)


def parse_record(kind: type[_M], data: bytes, run_id: str, key: str) -> _M:
    """
    :raises CorruptLog: if ``data`` is not a ``kind`` record
    """
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise CorruptLog(run_id, key, f"not a {kind.__name__} record ({exc})") from None


def check_segment(segment: pb.Segment, run_id: str, key: str, seq: int) -> None:
    """
    :raises CorruptLog: if the segment comes from a newer format, or is not segment
        ``seq`` of run ``run_id``
    """
    if segment.format > FORMAT_VERSION:
        raise CorruptLog(
            run_id, key, f"written in format {segment.format}, this code reads up to "
            f"{FORMAT_VERSION}: upgrade substantial",
        )  # fmt: skip
    if segment.run_id != run_id or segment.seq != seq:
        raise CorruptLog(
            run_id, key, f"foreign segment: it says run {segment.run_id!r} segment {segment.seq}"
        )
