"""
Stored values shown to an operator without importing user code: payloads of the JSON
codec are read as plain JSON (a dataclass becomes its fields, a datetime its ISO string).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from substantial._payload_codecs import EncryptedPayload, open_payload
from substantial.codec import decode_payload
from substantial.errors import CodecError
from substantial.protocol import substantial_pb2 as pb

__all__ = ["ENCRYPTED", "plain_value", "safe_plain", "time_of"]

#: How a value encrypted with a key this process lacks is shown.
ENCRYPTED = "<encrypted>"


def plain_value(payload: pb.Payload) -> Any:
    """
    A payload as plain JSON-compatible data, without importing the classes it names.

    A value in a blob that was not read shows as ``<blob: N bytes>``; one encrypted with a
    key this process lacks (see ``$SUBSTANTIAL_KEYS``) as ``<encrypted>``.

    :raises CodecError: if the payload's codec is not JSON and it cannot be decoded
    """
    if payload.blob:
        return f"<blob: {payload.blob_size:,} bytes>"
    try:
        payload = open_payload(payload)
    except EncryptedPayload:
        return ENCRYPTED
    if payload.codec == "json":
        try:
            return _untag(json.loads(payload.data))
        except ValueError as exc:
            raise CodecError(f"payload is not JSON: {exc}") from exc
    return _jsonable(decode_payload(payload))


def safe_plain(payload: pb.Payload) -> Any:
    """:func:`plain_value`, or a ``<undecodable: ...>`` note in its place."""
    try:
        return plain_value(payload)
    except CodecError as exc:
        return f"<undecodable: {exc}>"


def time_of(ms: int) -> datetime | None:
    """A stored epoch-milliseconds time (0: none) as a UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "$t" not in value:
        return {key: _untag(item) for key, item in value.items()}
    if value["$t"] == "dict":
        return {
            key if isinstance(key, str) else json.dumps(_untag(key)): _untag(item)
            for key, item in value.get("v", [])
        }
    return _untag(value.get("v"))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))
