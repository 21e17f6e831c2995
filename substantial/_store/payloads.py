"""
Payloads at rest. On the way to storage every payload of a record (log segment, inbox
entry, summary) goes through the conductor's payload codecs (compression, encryption),
and one still larger than the blob threshold is stored once, content-addressed, at
``blobs/{sha256}``; the record keeps the reference. On the way back blobs are read and
the codecs undone, where this process has their keys (a payload whose key is unknown
stays sealed: decoding it raises :class:`~substantial.codec.EncryptedPayload`).

The in-memory record is never changed: what is written is a copy with sealed payloads.

Blob references, and why ``gc`` cannot delete a blob a run is about to refer to::

    runs/{run}/blobs/{sha}    the run's side: deleted with the run
    blobrefs/{sha}/{run}      the blob's side: what gc lists (content: creation ms)
    blobgc/{sha}              gc's mark: "about to delete this blob"
    blobs/{sha}               the bytes

A writer creates both reference keys, *then* reads the mark, and only with no mark
creates (or reuses) the blob; with a mark it keeps the bytes in the record instead. gc
marks an unreferenced blob, lists its references again, and deletes it (then the mark)
only if there are still none. Any writer that reuses the blob either created its
reference before that second listing (gc sees it and keeps the blob) or read the mark
after gc wrote it (and kept its bytes inline). See docs/decisions.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from substantial._core import constants
from substantial._core.clock import now_ms
from substantial._payload_codecs import (
    PayloadCodec,
    chain_decode,
    chain_encode,
    registered_names,
)
from substantial._store.keys import (
    blob_key,
    blob_mark_key,
    blob_ref_key,
    run_blob_key,
)
from substantial.backends.base import Backend
from substantial.errors import CodecError, CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "DEFAULT_POLICY",
    "PayloadPolicy",
    "maybe_sealed",
    "open_records",
    "payloads_in",
    "seal",
    "size_with_blobs",
]

Record = pb.Segment | pb.InboxEntry | pb.RunMeta | pb.Event
_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True)
class PayloadPolicy:
    """
    How payloads are stored: the payload codecs applied in order, and the size from
    which a payload's bytes go to a blob.
    """

    codecs: tuple[PayloadCodec, ...] = ()
    blob_threshold: int = constants.BLOB_THRESHOLD_BYTES


DEFAULT_POLICY = PayloadPolicy()


def payloads_in(record: Message) -> Iterator[pb.Payload]:
    """
    Every payload a record holds, found through the message types (so a payload in an
    event kind added later is sealed and opened too).
    """
    for field, value in record.ListFields():
        if field.message_type is None:
            continue
        for item in value if _repeated(field) else [value]:
            if field.message_type is _PAYLOAD:
                yield item
            elif field.message_type in _HOLDS_PAYLOADS:
                yield from payloads_in(item)


async def seal(backend: Backend, run_id: str, record: Record, policy: PayloadPolicy) -> bytes:
    """
    ``record`` serialized with its payloads as stored: encoded by the policy's codecs,
    the large ones in blobs (written here, first). ``record`` itself is never changed:
    the bytes come from a copy built field by field around the sealed payloads, which
    copies no large value (assigning to the record's own fields would grow its protobuf
    arena by each value, and show other tasks a half-sealed record during the writes).
    """
    threshold = policy.blob_threshold
    if not policy.codecs and record.ByteSize() <= threshold:
        return record.SerializeToString()  # the common case: nothing to do
    sealed: list[pb.Payload | None] = []
    for payload in payloads_in(record):
        if payload.blob or payload.encodings:
            sealed.append(None)  # already sealed (e.g. a summary rebuilt from a stored start)
        elif not policy.codecs and payload.ByteSize() <= threshold:
            sealed.append(None)
        else:
            sealed.append(await _seal_one(backend, run_id, payload, policy))
    if not any(sealed):
        return record.SerializeToString()
    replacements = iter(sealed)
    return _copy_with(record, lambda: next(replacements)).SerializeToString()


async def _seal_one(
    backend: Backend, run_id: str, payload: pb.Payload, policy: PayloadPolicy
) -> pb.Payload | None:
    data, names, key_id = _encode(payload.data, policy.codecs)
    sha = await _store_blob(backend, run_id, data) if len(data) > policy.blob_threshold else ""
    if sha:
        return pb.Payload(
            codec=payload.codec, blob=sha, blob_size=len(data), encodings=names, key_id=key_id
        )
    if names:
        return pb.Payload(codec=payload.codec, data=data, encodings=names, key_id=key_id)
    return None


def _copy_with(message: _M, replacement: Callable[[], pb.Payload | None]) -> _M:
    """
    A copy of ``message`` in which each payload is what ``replacement()`` gives for it,
    in :func:`payloads_in` order (None: the payload as it is).
    """
    out = type(message)()
    for field, value in message.ListFields():
        target = getattr(out, field.name)
        if field.message_type is None:
            if _repeated(field):
                target.extend(value)
            else:
                setattr(out, field.name, value)
            continue
        items = value if _repeated(field) else [value]
        for item in items:
            slot = target.add() if _repeated(field) else target
            if field.message_type is _PAYLOAD:
                slot.CopyFrom(replacement() or item)
            elif field.message_type in _HOLDS_PAYLOADS:
                slot.CopyFrom(_copy_with(item, replacement))
            else:
                slot.CopyFrom(item)
    return out


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _holding_payloads() -> frozenset[Descriptor]:
    """The message types that contain a Payload, at any depth."""
    found: set[Descriptor] = set()
    changed = True
    types = list(pb.DESCRIPTOR.message_types_by_name.values())
    while changed:
        changed = False
        for kind in types:
            if kind in found:
                continue
            for field in kind.fields:
                if field.message_type is _PAYLOAD or field.message_type in found:
                    found.add(kind)
                    changed = True
                    break
    return frozenset(found)


_PAYLOAD = pb.Payload.DESCRIPTOR
_HOLDS_PAYLOADS = _holding_payloads()


def _encode(data: bytes, codecs: Sequence[PayloadCodec]) -> tuple[bytes, list[str], str]:
    if not codecs:
        return data, [], ""
    try:
        return chain_encode(codecs, data)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"payload codecs could not encode a payload: {exc!r}") from exc


async def _store_blob(backend: Backend, run_id: str, data: bytes) -> str:
    """
    Store ``data`` as a blob (after both references to it).

    :return: its sha256, or "" if gc is deleting that blob right now: keep it inline
    """
    sha = hashlib.sha256(data).hexdigest()
    await backend.create(run_blob_key(run_id, sha), b"")
    await backend.create(blob_ref_key(sha, run_id), str(now_ms()).encode())
    if await backend.get(blob_mark_key(sha)) is not None:
        return ""
    await backend.create(blob_key(sha), data)
    return sha


def size_with_blobs(kind: type[Message], data: bytes) -> int:
    """The bytes a stored record takes once its blobs are read (for memory budgets)."""
    size = len(data)
    if b"\x2a\x40" not in data:
        return size
    try:
        record = kind.FromString(data)
    except Exception:
        return size
    return size + sum(payload.blob_size for payload in payloads_in(record))


def maybe_sealed(data: bytes) -> bool:
    """
    Whether stored bytes may hold a sealed payload: a blob reference (field 5, 64 hex
    characters: the bytes ``2a 40``) or the name of a payload codec registered here (a
    payload of an unregistered one cannot be opened anyway). A false alarm costs a walk.
    """
    return b"\x2a\x40" in data or any(name in data for name in registered_names())


async def open_records(
    backend: Backend, run_id: str, records: Iterable[Record], *, blobs: bool = True
) -> None:
    """
    Undo :func:`seal` in place: read the blobs referred to, then undo the codecs where
    the keys are known here (payloads with unknown keys stay sealed).

    :param blobs: read blobs too (a listing leaves them, and shows their size)
    :raises CorruptLog: if a blob referred to is missing
    """
    sealed = [p for record in records for p in payloads_in(record) if p.blob or p.encodings]
    if not sealed:
        return
    if blobs:
        refs = [p for p in sealed if p.blob]
        keys = [blob_key(p.blob) for p in refs]
        for payload, key, entry in zip(refs, keys, await backend.get_many(keys), strict=True):
            if entry is None:
                raise CorruptLog(run_id, key, "a blob the log refers to is missing")
            payload.data = entry[0]
            payload.ClearField("blob")
            payload.ClearField("blob_size")
    for payload in sealed:
        if payload.encodings and not payload.blob:
            try:
                data = chain_decode(payload.encodings, payload.data, payload.key_id)
            except CodecError:
                continue  # decoding the value raises it, where it is used
            payload.data = data
            payload.ClearField("encodings")
            payload.ClearField("key_id")
