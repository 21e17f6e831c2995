"""
Compaction: bound the history of a long-lived workflow.

``key=`` on ``save``, ``receive`` and ``handle`` names a *slot*. ``Context.compact()``
rewrites the run's history to keep, of each slot, only its newest record: the newest
result of a keyed ``save``, the newest event a keyed ``receive`` took, the newest event a
keyed handler saw. Everything up to the first keyed record is kept as it is, and so are
events not yet received. Replaying the compacted history runs the workflow's loop once
more with the newest values (keyed records are matched by key, not position), which
brings it back to where it was.

For that to be sound, every record after the first keyed one must be keyed or an event
still waiting: an unkeyed ``save``, ``sleep``, timeout or child in between would lose its
place, and ``compact()`` refuses with :class:`~substantial.errors.CompactionError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from substantial.errors import CompactionError
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Entry", "check", "compacted"]

#: Records matched to the code by position: they cannot move, so they cannot be
#: dropped from between keyed records.
_POSITIONAL = frozenset(
    {
        "step_completed",
        "step_attempt_failed",
        "timer_started",
        "timer_fired",
        "child_started",
        "version_marked",
    }
)


@dataclass(eq=False, slots=True)
class Entry:
    """One applied event and the slot it belongs to, if any."""

    event: pb.Event
    order: int
    #: (slot kind, key, group): the newest group of each (kind, key) is kept
    cover: tuple[str, str, int] | None = None
    #: an event an unkeyed ``receive`` took: it holds its place in the history
    received_unkeyed: bool = False


def check(run_id: str, entries: list[Entry], keyed: bool = False) -> bool:
    """
    Check records in order; ``keyed`` says whether a keyed record came before them.

    :return: whether a keyed record has been seen, for checking the next records
    :raises CompactionError: if a record after the first keyed one cannot be dropped
        or moved
    """
    for entry in entries:
        if entry.cover is not None:
            keyed = True
            continue
        if not keyed:
            continue
        kind = entry.event.WhichOneof("kind") or "?"
        if kind in _POSITIONAL or entry.received_unkeyed:
            what = kind.replace("_", " ")
            if entry.received_unkeyed:
                what = f"event {entry.event.event_received.name!r} taken by a receive"
            raise CompactionError(run_id, what)
    return keyed


def compacted(history: list[Entry]) -> list[Entry]:
    """The history with only the newest group of each slot."""
    newest: dict[tuple[str, str], int] = {}
    for entry in history:
        if entry.cover is not None:
            kind, key, group = entry.cover
            newest[kind, key] = max(group, newest.get((kind, key), group))
    return [
        entry
        for entry in history
        if entry.cover is None or entry.cover[2] == newest[entry.cover[0], entry.cover[1]]
    ]
