"""
Payload codecs: byte-to-byte transforms applied after the value codec (JSON), in the
order a conductor lists them (``Conductor(codecs=[ZstdCodec(), AESGCMCodec(keys)])``).
The model is Temporal's ``PayloadCodec``: compression, then encryption.

Each payload records the names of the codecs applied (``Payload.encodings``) and the key
id an encrypting codec used (``Payload.key_id``), so a reader undoes them in reverse with
the key that wrote them: keys rotate without rewriting old logs. Readers find codecs by
name among those registered in the process (a conductor registers its own; the CLI
registers the keys in ``SUBSTANTIAL_KEYS``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import zlib
from collections.abc import Iterable, Mapping
from typing import Protocol

from substantial.errors import CodecError, EncryptedPayload
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "KEYS_ENV",
    "AESGCMCodec",
    "EncryptedPayload",
    "PayloadCodec",
    "ZlibCodec",
    "ZstdCodec",
    "chain_decode",
    "chain_encode",
    "get_payload_codec",
    "keys_from_env",
    "open_payload",
    "parse_keys",
    "register_payload_codec",
    "registered_names",
]

#: The environment variable the CLI reads keys from: ``id1:base64key,id2:base64key``.
KEYS_ENV = "SUBSTANTIAL_KEYS"


class PayloadCodec(Protocol):
    """Transforms a payload's bytes after the value codec; ``name`` is stored with them."""

    name: str

    def encode(self, data: bytes) -> tuple[bytes, str]:
        """The transformed bytes, and the id of the key used (``""``: none)."""
        ...

    def decode(self, data: bytes, key_id: str) -> bytes:
        """
        Undo :meth:`encode`.

        :raises CodecError: if the bytes are bad, or ``key_id`` is unknown here
        """
        ...


class ZlibCodec:
    """Compression with :mod:`zlib` (standard library)."""

    name = "zlib"

    def __init__(self, level: int = 1) -> None:
        self.level = level

    def encode(self, data: bytes) -> tuple[bytes, str]:
        return zlib.compress(data, self.level), ""

    def decode(self, data: bytes, key_id: str) -> bytes:
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            raise CodecError(f"payload codec 'zlib' could not decompress: {exc}") from None


class ZstdCodec:
    """Compression with Zstandard (``pip install 'substantial[zstd]'``): smaller and faster."""

    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        try:
            import zstandard
        except ImportError:
            raise CodecError(
                "ZstdCodec needs the zstandard package: pip install 'substantial[zstd]'"
            ) from None
        self._compress = zstandard.ZstdCompressor(level=level).compress
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, data: bytes) -> tuple[bytes, str]:
        return self._compress(data), ""

    def decode(self, data: bytes, key_id: str) -> bytes:
        try:
            return self._decompressor.decompress(data)
        except Exception as exc:  # zstandard.ZstdError
            raise CodecError(f"payload codec 'zstd' could not decompress: {exc}") from None


#: Every AES key registered in this process, by id: any AESGCMCodec decodes with them.
_KEYRING: dict[str, bytes] = {}
_NONCE = 12


class AESGCMCodec:
    """
    Encryption with AES-256-GCM (``pip install 'substantial[crypto]'``). Encrypts with
    the key ``current`` (default: the first one given) and stores its id with each
    payload; decrypts with whichever key a payload names, so old keys stay readable.

    :param keys: key id -> 32-byte key; ids are short names without ``:`` or ``,``
    :param current: the id of the key new payloads are encrypted with
    :raises CodecError: if a key is not 32 bytes, or ``current`` is not among ``keys``
    """

    name = "aes256gcm"

    def __init__(self, keys: Mapping[str, bytes], *, current: str | None = None) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise CodecError(
                "AESGCMCodec needs the cryptography package: pip install 'substantial[crypto]'"
            ) from None
        if not keys:
            raise CodecError("AESGCMCodec needs at least one key")
        for key_id, key in keys.items():
            _check_key(key_id, key)
        self.keys = dict(keys)
        self.current = current if current is not None else next(iter(keys))
        if self.current not in self.keys:
            raise CodecError(f"AESGCMCodec: current key id {self.current!r} is not among the keys")
        self._aead = AESGCM
        self._ciphers = {key_id: AESGCM(key) for key_id, key in self.keys.items()}
        # A key of its own for nonces, derived so the AES key is used for AES only.
        self._nonce_key = hashlib.sha256(b"substantial nonce\0" + self.keys[self.current]).digest()

    def encode(self, data: bytes) -> tuple[bytes, str]:
        # A synthetic nonce (HMAC of the plaintext): the same value sealed twice gives the
        # same bytes, so a summary rewritten each wake-up keeps referring to one blob.
        # It reveals only that two payloads under one key are equal (docs/decisions.md).
        nonce = hmac.new(self._nonce_key, data, hashlib.sha256).digest()[:_NONCE]
        # The key id is authenticated too: a payload cannot be relabelled to another key.
        sealed = self._ciphers[self.current].encrypt(nonce, data, self.current.encode())
        return nonce + sealed, self.current

    def decode(self, data: bytes, key_id: str) -> bytes:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            key = _KEYRING.get(key_id)
            if key is None:
                raise EncryptedPayload(key_id)
            cipher = self._ciphers[key_id] = self._aead(key)
        try:
            return bytes(cipher.decrypt(data[:_NONCE], data[_NONCE:], key_id.encode()))
        except Exception:  # cryptography's InvalidTag: wrong key or altered bytes
            raise CodecError(
                f"payload encrypted with key id {key_id!r} does not decrypt: the key is "
                "not the one it was written with, or the bytes were altered"
            ) from None


def _check_key(key_id: str, key: bytes) -> None:
    if not key_id or any(c in key_id for c in ":, ") or not key_id.isprintable():
        raise CodecError(f"bad key id {key_id!r}: non-empty, no ':', ',' or spaces")
    if not isinstance(key, bytes) or len(key) != 32:
        size = len(key) if isinstance(key, bytes) else type(key).__name__
        raise CodecError(f"key {key_id!r} must be 32 bytes for AES-256, got {size}")


def parse_keys(text: str) -> dict[str, bytes]:
    """
    Keys in the ``SUBSTANTIAL_KEYS`` format: ``id1:base64key,id2:base64key`` (each key
    32 bytes, standard base64); the first is the current one.

    :raises CodecError: naming the entry that is malformed
    """
    keys: dict[str, bytes] = {}
    for index, entry in enumerate(part.strip() for part in text.split(",")):
        if not entry:
            continue
        key_id, colon, encoded = entry.partition(":")
        if not colon:
            raise CodecError(f"${KEYS_ENV} entry {index}: expected 'id:base64key'")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise CodecError(f"${KEYS_ENV} key {key_id!r} is not base64") from None
        _check_key(key_id, key)
        keys[key_id] = key
    return keys


def keys_from_env(environ: Mapping[str, str] | None = None) -> AESGCMCodec | None:
    """An :class:`AESGCMCodec` of the keys in ``$SUBSTANTIAL_KEYS``, registered; or None."""
    text = (os.environ if environ is None else environ).get(KEYS_ENV, "")
    keys = parse_keys(text)
    if not keys:
        return None
    codec = AESGCMCodec(keys)
    register_payload_codec(codec)
    return codec


_PAYLOAD_CODECS: dict[str, PayloadCodec] = {ZlibCodec.name: ZlibCodec()}


def register_payload_codec(codec: PayloadCodec) -> None:
    """
    Make payloads written by ``codec`` readable in this process (a conductor registers
    the codecs it is given). The keys of every :class:`AESGCMCodec` registered are all
    usable to decrypt.
    """
    name = getattr(codec, "name", None)
    if not isinstance(name, str) or not name:
        raise CodecError(f"cannot register payload codec {codec!r}: it needs a name")
    if isinstance(codec, AESGCMCodec):
        _KEYRING.update(codec.keys)
    _PAYLOAD_CODECS[name] = codec


def registered_names() -> tuple[bytes, ...]:
    """The names of the payload codecs registered here (and zstd, made on first use)."""
    return (ZstdCodec.name.encode(), *(name.encode() for name in _PAYLOAD_CODECS))


def get_payload_codec(name: str) -> PayloadCodec:
    """
    :raises CodecError: naming the payload codec that is not registered here
    """
    codec = _PAYLOAD_CODECS.get(name)
    if codec is None:
        if name == ZstdCodec.name:  # needs no configuration: made on first use
            codec = _PAYLOAD_CODECS[name] = ZstdCodec()
            return codec
        known = ", ".join(sorted(_PAYLOAD_CODECS))
        raise CodecError(f"unknown payload codec {name!r}; registered: {known}")
    return codec


def chain_encode(codecs: Iterable[PayloadCodec], data: bytes) -> tuple[bytes, list[str], str]:
    """Apply ``codecs`` in order: the bytes, the names applied, the last key id used."""
    names: list[str] = []
    key_id = ""
    for codec in codecs:
        data, used = codec.encode(data)
        names.append(codec.name)
        key_id = used or key_id
    return data, names, key_id


def chain_decode(names: Iterable[str], data: bytes, key_id: str) -> bytes:
    """Undo the codecs named, in reverse order."""
    for name in reversed(list(names)):
        if name == AESGCMCodec.name and name not in _PAYLOAD_CODECS:
            raise EncryptedPayload(key_id)
        data = get_payload_codec(name).decode(data, key_id)
    return data


def open_payload(payload: pb.Payload) -> pb.Payload:
    """
    ``payload`` with its payload codecs undone (itself if it has none).

    :raises CodecError: if it names no codec, its bytes are still in a blob, or a codec
        or key is missing
    """
    if not payload.codec:
        raise CodecError("payload names no codec (an empty or unset Payload)")
    if payload.blob:
        raise CodecError(f"payload is in blob {payload.blob!r}, which was not read")
    if not payload.encodings:
        return payload
    data = chain_decode(payload.encodings, payload.data, payload.key_id)
    return pb.Payload(codec=payload.codec, data=data)
