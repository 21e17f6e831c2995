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

:class:`History` holds a run's applied events and tags each with its slot as the engine
applies it; the tagging rules live here, next to the rules that use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from substantial._core import constants
from substantial.errors import CompactionError
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Entry", "History", "check", "compacted"]

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


class History:
    """
    Every event a run applied, oldest first, each tagged with the slot it fills; compacted
    when the workflow asks.

    :ivar entries: the applied events, as compacted at the last :meth:`compact`
    :ivar compact_requested: whether :meth:`compact` compacted since the agent last took
        the compacted history
    :ivar compactions: how many times the agent took a compacted history
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        #: the applied events: an event becomes an Entry once tagged (:meth:`last`) or
        #: read (:attr:`entries`), not at :meth:`add`, once per event a replay applies
        self._items: list[Entry | pb.Event] = []
        self._made = 0  # the items before this index are all entries
        self.compact_requested = False
        self.compactions = 0
        self._order = 0
        self._compacted_size = 0
        self._checked = 0  # entries compact() has checked
        self._keyed = False  # whether a checked entry was keyed
        self._handler_keys: dict[str, str] = {}

    @property
    def entries(self) -> list[Entry]:
        """The applied events, as compacted at the last :meth:`compact`."""
        items, made = self._items, self._made
        first = self._order - (len(items) - made)  # the order of items[made]
        for index in range(made, len(items)):
            item = items[index]
            if not isinstance(item, Entry):
                items[index] = Entry(item, first + index - made)
        self._made = len(items)
        return cast(list[Entry], items)

    def add(self, event: pb.Event) -> None:
        """Append an applied event, untagged so far."""
        self._items.append(event)
        self._order += 1

    def last(self) -> Entry:
        """The entry of the event added last (to tag it)."""
        item = self._items[-1]
        if isinstance(item, Entry):
            return item
        entry = self._items[-1] = Entry(item, self._order - 1)
        return entry

    def tag_step(self, entry: Entry, key: str, position: int) -> None:
        """A step record: a keyed one fills the slot of its ``save``."""
        if key:
            entry.cover = ("save", key, position)

    def tag_taken(self, entry: Entry, key: str) -> None:
        """An event a ``receive`` took: a keyed one fills its slot, an unkeyed one holds
        its place."""
        if key:
            entry.cover = ("recv", key, entry.order)
        else:
            entry.received_unkeyed = True

    def tag_delivered(self, name: str, entry: Entry) -> None:
        """An event just delivered: it fills the slot of a keyed handler of its name."""
        key = self._handler_keys.get(name)
        if key:
            entry.cover = ("handle", key, entry.order)

    def add_handler(self, name: str, key: str | None) -> None:
        """A handler for ``name``: with a key, the events it sees from now on fill its slot."""
        if key:
            self._handler_keys[name] = key

    def tag_handled(self, entry: Entry, key: str | None) -> None:
        """An event delivered before a handler with ``key`` was added, as the handler sees
        it: it fills the handler's slot, unless a ``receive`` took it or it fills one."""
        if key and entry.cover is None and not entry.received_unkeyed:
            entry.cover = ("handle", key, entry.order)

    def compact(self) -> None:
        """
        Compact the entries if enough were added since the last compaction.

        :raises CompactionError: if an unkeyed record follows a keyed one
        """
        fresh = self.entries[self._checked :]
        self._keyed = check(self.run_id, fresh, self._keyed)
        self._checked = len(self.entries)
        if len(self.entries) < self._compacted_size + constants.COMPACT_MIN_RECORDS:
            return  # a later call compacts; any call is as good a point as another
        self._items = list[Entry | pb.Event](compacted(self.entries))
        self._compacted_size = self._checked = self._made = len(self._items)
        self.compact_requested = True

    def take_compacted(self) -> list[pb.Event]:
        """The history as compacted at the last :meth:`compact`, plus what followed."""
        self.compact_requested = False
        self.compactions += 1
        return [entry.event for entry in self.entries]
