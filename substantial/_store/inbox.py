"""
What one wake-up takes from a run's inbox: at most ``MERGE_LIMIT`` entries and about
``MERGE_BYTES`` of them (always at least one entry, so a run flooded with large events
still moves), read in small chunks so the byte budget bounds what is held in memory.
Entries it cannot merge are set aside (:mod:`substantial._store.quarantine`) rather than stop
the run.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from substantial._core import constants
from substantial._payload_codecs import EncryptedPayload
from substantial._store import quarantine
from substantial._store.keys import inbox_prefix
from substantial._store.payloads import open_records, size_with_blobs
from substantial._store.runs import RunStore
from substantial.backends.base import Backend
from substantial.codec import decode_payload
from substantial.errors import CodecError, CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Intake", "unmergeable"]

#: Entries fetched at once before their sizes are known; later chunks are sized to fit
#: the bytes left.
_FIRST_CHUNK = 8
_MAX_CHUNK = 64


class Intake:
    """
    The inbox entries one wake-up of ``run_id`` merges. :attr:`entries` holds the good
    ones read so far, in arrival order; :attr:`bad` those to set aside.

    :param limit: most entries per wake-up (default ``constants.MERGE_LIMIT``)
    :param max_bytes: most bytes per wake-up, though at least one entry is always taken
        (default ``constants.MERGE_BYTES``)
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.limit = constants.MERGE_LIMIT if limit is None else limit
        self.max_bytes = constants.MERGE_BYTES if max_bytes is None else max_bytes
        self.entries: list[tuple[str, pb.InboxEntry]] = []
        #: ``(key, raw bytes, reason)`` of entries that cannot be merged
        self.bad: list[tuple[str, bytes, str]] = []
        #: whether entries were left for the next wake-up
        self.more = False
        self.count = 0
        self.bytes = 0
        self._last: str | None = None

    @property
    def full(self) -> bool:
        """Whether this wake-up has taken all it may."""
        return self.more or self.count >= self.limit or self.bytes >= self.max_bytes

    async def read(self) -> list[tuple[str, pb.InboxEntry]]:
        """
        Read the entries after those read before, within what is left of the budget.

        :return: the good entries this call read (also appended to :attr:`entries`)
        """
        if self.full:
            return []
        backend = self.store.backend
        wanted = self.limit - self.count
        keys = await backend.list(inbox_prefix(self.run_id), after=self._last, limit=wanted)
        fresh: list[tuple[str, pb.InboxEntry]] = []
        index = 0
        chunk = _FIRST_CHUNK
        while index < len(keys):
            batch = keys[index : index + chunk]
            for key, entry in zip(batch, await backend.get_many(batch), strict=True):
                size = size_with_blobs(pb.InboxEntry, entry[0]) if entry is not None else 0
                if self.count and self.bytes + size > self.max_bytes:
                    self.more = True  # over budget: it waits for the next wake-up
                    return self._took(fresh)
                self.count += 1
                self.bytes += size
                self._last = key
                if entry is None:
                    continue  # merged and deleted meanwhile
                reason, parsed = await unmergeable(backend, self.run_id, entry[0])
                if parsed is None:
                    self.bad.append((key, entry[0], reason))
                else:
                    fresh.append((key, parsed))
            index += len(batch)
            average = max(1, self.bytes // max(1, self.count))
            chunk = max(1, min(_MAX_CHUNK, (self.max_bytes - self.bytes) // average))
        self.more = len(keys) == wanted  # maybe more after the last key listed
        return self._took(fresh)

    def _took(self, fresh: list[tuple[str, pb.InboxEntry]]) -> list[tuple[str, pb.InboxEntry]]:
        self.entries.extend(fresh)
        return fresh

    async def set_aside(self) -> None:
        """Quarantine the bad entries read so far."""
        bad, self.bad = self.bad, []
        for key, data, reason in bad:
            await quarantine.set_aside(self.store, self.run_id, key, data, reason)


async def unmergeable(
    backend: Backend, run_id: str, data: bytes
) -> tuple[str, pb.InboxEntry | None]:
    """
    Parse an inbox entry, read its blobs and decode what the run would decode when it is
    merged. A value encrypted with a key this agent lacks is mergeable: the run parks on
    it, naming the key, and goes on once an agent with the key takes it.

    :return: ``("", entry)``, or the reason it cannot be merged and None
    """
    try:
        entry = pb.InboxEntry.FromString(data)
    except DecodeError as exc:
        return f"not an InboxEntry record ({exc})", None
    if not entry.id:
        return "an inbox entry with no event id", None
    try:
        await open_records(backend, run_id, [entry])
    except CorruptLog as exc:
        return f"its value cannot be read: {exc}", None
    try:
        if entry.HasField("child_ended"):
            if entry.child_ended.HasField("result"):
                decode_payload(entry.child_ended.result)
        elif not (entry.cancel or entry.HasField("terminate") or entry.HasField("pause_change")):
            decode_payload(entry.value)
    except EncryptedPayload:
        pass
    except CodecError as exc:
        return f"its value cannot be decoded here: {exc}", None
    return "", entry
