"""
Value encoding: what a workflow saves, its arguments, its result and event payloads.

Every value becomes a :class:`~substantial.protocol.substantial_pb2.Payload` that names the
codec it was written with, so old logs still decode after the default changes. Logs are
input that someone else may have written: nothing here unpickles, evaluates or imports.

The JSON codec writes plain JSON for ``None``, ``bool``, ``int``, finite ``float``,
``str``, ``list`` and ``dict`` with ``str`` keys. Every other supported value is a tagged
object whose first key is ``"$t"``::

    {"$t":"tuple","v":[1,2]}            tuple, set, frozenset (sets sorted by encoding)
    {"$t":"dict","v":[[k,v],...]}       a dict with a non-str key, or with a "$t" key
    {"$t":"datetime","v":"2024-..."}    also date, time, timedelta, uuid, decimal, bytes,
                                        and float ("nan", "inf", "-inf")
    {"$t":"dataclass","c":"mod:Qual","v":{...}}   also enum, pydantic, namedtuple

A user dict holding a ``"$t"`` key is always written in the ``dict`` form, so it can never
be read back as a tag. A class named by ``"c"`` must be *allowed* (see
:mod:`substantial._allow`): registered with :func:`register_type` (or
``JSONCodec(types=...)``), or named in the annotations of a ``@workflow`` or of a step
function given to ``Context.save``. Encoding an instance of any other class fails at
once, at the sender. ``JSONCodec(trust_imported=True)`` also accepts any class of a
tagged kind in an imported module. A dataclass is rebuilt by ``__init__`` (init fields).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from substantial import _allow
from substantial._allow import kind_of, name_of
from substantial._json_tags import (
    ASCII_ENCODER,
    CLASS_KINDS,
    DECODERS,
    ENCODABLE,
    ENCODER,
    HOW,
    SIMPLE,
    TAG,
    Unencodable,
    decode_plain,
    is_plain,
    lookup,
    rebuild,
    registrable,
)
from substantial._payload_codecs import open_payload, register_payload_codec
from substantial.errors import CodecError
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "DEFAULT_CODEC",
    "Codec",
    "JSONCodec",
    "decode_payload",
    "encode_payload",
    "get_codec",
    "register_codec",
    "register_payload_codec",
    "register_type",
]


class Codec(Protocol):
    """Turns values into bytes and back. ``name`` is stored with every payload."""

    name: str

    def encode(self, value: object) -> bytes:
        """Encode ``value``; raise :class:`CodecError` if it cannot be encoded."""
        ...

    def decode(self, data: bytes) -> object:
        """Decode bytes written by :meth:`encode`; raise :class:`CodecError` if they are bad."""
        ...


_REGISTERED = _allow._REGISTERED  # classes given to register_type(), by name
_RESOLVED: dict[type, str] = {}  # classes already found by name in sys.modules


def register_type(cls: type) -> None:
    """
    Allow every :class:`JSONCodec` to encode and decode instances of ``cls`` by name.

    Needed for classes that no workflow's or step's annotations name: event values sent
    with ``Handle.send``, ``set_status`` values, subclasses of an annotated class, values
    of fields typed ``Any``; and for codecs built with ``registered_only=True``.

    :param cls: a dataclass, Enum, pydantic model or NamedTuple class
    :raises CodecError: if ``cls`` is none of those
    """
    _allow.register(registrable(cls), cls)


class JSONCodec:
    """
    The default codec: compact, deterministic JSON with tagged objects for other types.

    :param types: classes this codec may rebuild by name, in addition to those given to
        :func:`register_type` and those named in workflows' and steps' annotations
    :param registered_only: only the classes registered with :func:`register_type` or
        given as ``types``; not those found in annotations
    :param trust_imported: also any class of a tagged kind in a module already imported
        (``sys.modules``): a payload then chooses among every such class in the process.
        Opt in for the whole process with ``register_codec(JSONCodec(trust_imported=True))``
    """

    name = "json"

    def __init__(
        self,
        *,
        types: Iterable[type] = (),
        registered_only: bool = False,
        trust_imported: bool = False,
    ) -> None:
        self.registered_only = registered_only
        self.trust_imported = trust_imported and not registered_only
        self._types: dict[str, type] = {}
        for cls in types:
            self._types[registrable(cls)] = cls
        self._tagged = json.JSONDecoder(object_hook=self._hook)

    # ---- encoding

    def encode(self, value: object, *, where: str = "value") -> bytes:
        """
        Encode ``value`` as UTF-8 JSON; equal values built the same way give equal bytes.

        :param where: how error messages name the value, e.g. ``"args"``
        :raises CodecError: naming the type and its place, e.g. ``value[0]['lock']``
        """
        try:
            tree = value if is_plain(value) else self._walk(value)
            try:
                return ENCODER.encode(tree).encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: let JSON escape them
                return ASCII_ENCODER.encode(tree).encode("ascii")
        except Unencodable as exc:
            path = where + "".join(reversed(exc.parts))
            reason = f": {exc.reason}" if exc.reason else ""
            raise CodecError(
                f"cannot encode value of type {exc.type_name!r} at {path}{reason}"
            ) from None
        except RecursionError:
            raise CodecError(
                f"cannot encode {where}: nested too deeply or contains a cycle"
            ) from None
        except ValueError as exc:  # e.g. an int too long to print
            raise CodecError(f"cannot encode {where}: {exc}") from None

    def _walk(self, v: object) -> object:
        t = type(v)
        if t is str or t is int or t is bool or v is None:
            return v
        if t is float:
            return v if math.isfinite(v) else {TAG: "float", "v": repr(v)}  # type: ignore[arg-type]
        if t is list:
            return self._items(v)  # type: ignore[arg-type]
        if t is dict:
            return self._dict(v)  # type: ignore[arg-type]
        simple = SIMPLE.get(t)
        if simple is not None:
            return {TAG: simple[0], "v": simple[1](v)}
        if t is tuple:
            return {TAG: "tuple", "v": self._items(v)}  # type: ignore[arg-type]
        if t is set or t is frozenset:
            return {TAG: t.__name__, "v": self._set(v)}  # type: ignore[arg-type]
        return self._object(v)

    def _items(self, items: list[object] | tuple[object, ...]) -> list[object]:
        out = []
        i = 0
        try:
            for i, x in enumerate(items):  # noqa: B007 (i is read on failure)
                out.append(self._walk(x))
        except Unencodable as exc:
            exc.parts.append(f"[{i}]")
            raise
        return out

    def _dict(self, d: dict[Any, Any]) -> object:
        if TAG not in d and all(type(k) is str for k in d):
            return self._members(d, "[{!r}]")
        pairs = []
        for k, x in d.items():
            try:
                key = self._walk(k)
            except Unencodable as exc:
                exc.parts.append(f"<key {k!r}>")
                raise
            try:
                pairs.append([key, self._walk(x)])
            except Unencodable as exc:
                exc.parts.append(f"[{k!r}]")
                raise
        return {TAG: "dict", "v": pairs}

    def _members(self, d: dict[str, object], part: str) -> dict[str, object]:
        out = {}
        for k, x in d.items():
            try:
                out[k] = self._walk(x)
            except Unencodable as exc:
                exc.parts.append(part.format(k))
                raise
        return out

    def _set(self, s: set[object] | frozenset[object]) -> list[object]:
        try:
            items = [self._walk(x) for x in s]
        except Unencodable as exc:
            exc.parts.append("{item}")
            raise
        # Set order depends on hashing (seeded per process for str): sort by the encoding.
        items.sort(key=ENCODER.encode)
        return items

    def _object(self, v: object) -> object:
        cls = type(v)
        kind = kind_of(cls)
        if kind is None:
            raise Unencodable(v, ENCODABLE)
        name = self._class_name(v, cls)
        inner: object
        if kind == "enum":
            inner = self._walk(v.value)  # type: ignore[attr-defined]
        elif kind == "namedtuple":
            inner = self._items(v)  # type: ignore[arg-type]
        elif kind == "dataclass":
            fields = [f for f in dataclasses.fields(v) if f.init]  # type: ignore[arg-type]
            inner = self._members({f.name: getattr(v, f.name) for f in fields}, ".{}")
        else:
            values = {f: getattr(v, f) for f in cls.model_fields}  # type: ignore[attr-defined]
            values.update(getattr(v, "__pydantic_extra__", None) or {})  # may hold a "$t"
            inner = self._dict(values) if TAG in values else self._members(values, ".{}")
        return {TAG: kind, "c": name, "v": inner}

    def _class_name(self, v: object, cls: type) -> str:
        name = name_of(cls)
        if self._types.get(name) is cls:
            return name
        if _allow.allowed(name, annotated=not self.registered_only) is cls:
            return name
        if self.registered_only:
            raise Unencodable(v, f"class {name!r} is not registered with this codec")
        if not self.trust_imported:
            raise Unencodable(v, f"class {name!r} is not allowed; {HOW}")
        if _RESOLVED.get(cls):
            return name
        found, why = lookup(name)
        if found is not cls:
            raise Unencodable(
                v, f"class {name!r} cannot be found by name: {why or 'another class has that name'}"
            )
        _RESOLVED[cls] = name
        return name

    # ---- decoding

    def decode(self, data: bytes) -> object:
        """
        Decode bytes written by :meth:`encode`.

        :raises CodecError: if the bytes are not such JSON, or name a class that cannot be
            resolved
        """
        return self._decode_from(lambda: bytes(data))

    def _decode_from(self, read: Callable[[], bytes]) -> object:
        """Decode the bytes ``read()`` returns, dropping them before the JSON is parsed."""
        try:
            text = read().decode("utf-8")  # the bytes are freed here, before parsing
            if '"$t"' in text or "\\u" in text:
                return self._tagged.decode(text)
            return decode_plain(text)
        except CodecError:
            raise
        except (ValueError, RecursionError, TypeError) as exc:
            reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
            size = len(read())
            raise CodecError(f"codec 'json' could not decode {size} bytes: {reason}") from None

    def _hook(self, d: dict[str, Any]) -> object:
        if TAG not in d:
            return d
        tag = d[TAG]
        if tag not in CLASS_KINDS and tag not in DECODERS:
            raise CodecError(f"codec 'json' found an unknown tag {tag!r}")
        try:
            if tag in CLASS_KINDS:
                if len(d) != 3 or "c" not in d or "v" not in d:
                    raise ValueError("expected the keys '$t', 'c' and 'v'")
                return self._rebuild(tag, d["c"], d["v"])
            if len(d) != 2 or "v" not in d:
                raise ValueError("expected the keys '$t' and 'v'")
            return DECODERS[tag](d["v"])
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"codec 'json' found a bad {tag!r} object: {exc}") from None

    def _rebuild(self, kind: str, name: str, v: Any) -> object:
        cls = self._types.get(name) or _allow.allowed(name, annotated=not self.registered_only)
        if cls is None:
            if self.registered_only:
                raise CodecError(
                    f"cannot resolve class {name!r}: it is not registered with this codec"
                )
            if not self.trust_imported:
                raise CodecError(f"cannot resolve class {name!r}: it is not allowed; {HOW}")
            cls, why = lookup(name)
            if cls is None:
                raise CodecError(f"cannot resolve class {name!r}: {why}")
        return rebuild(cls, kind, name, v)


DEFAULT_CODEC: Codec = JSONCodec()
_CODECS: dict[str, Codec] = {DEFAULT_CODEC.name: DEFAULT_CODEC}


def register_codec(codec: Codec) -> None:
    """
    Make payloads written by ``codec`` decodable; replaces a codec of the same name.

    :raises CodecError: if ``codec.name`` is not a non-empty string
    """
    name = getattr(codec, "name", None)
    if not isinstance(name, str) or not name:
        raise CodecError(f"cannot register codec {codec!r}: its name must be a non-empty string")
    _CODECS[name] = codec


def get_codec(name: str) -> Codec:
    """
    The registered codec called ``name``.

    :raises CodecError: naming the unknown codec and the registered ones
    """
    if name not in _CODECS:
        raise CodecError(f"unknown codec {name!r}; registered codecs: {', '.join(sorted(_CODECS))}")
    return _CODECS[name]


def encode_payload(
    value: object, codec: Codec | None = None, *, where: str = "value", limit: int | None = None
) -> pb.Payload:
    """
    Encode ``value`` into a payload that names its codec.

    :param codec: the codec to use; ``None``: the one registered as ``"json"``
    :param where: how error messages name the value, e.g. ``"args"`` or ``"result"``
    :param limit: the most bytes the encoded value may take; ``None``: no limit
    :raises CodecError: if the value cannot be encoded, or its encoding is over ``limit``
    """
    codec = _CODECS.get(DEFAULT_CODEC.name, DEFAULT_CODEC) if codec is None else codec
    if isinstance(codec, JSONCodec):
        data = codec.encode(value, where=where)
    else:
        try:
            data = codec.encode(value)
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"codec {codec.name!r} cannot encode {where}: {exc!r}") from exc
    if limit is not None and len(data) > limit:
        raise CodecError(
            f"cannot encode {where}: its {len(data):,} bytes are over the payload limit of "
            f"{limit:,} bytes (raise it with Conductor(max_payload=...))"
        )
    return pb.Payload(codec=codec.name, data=data)


def decode_payload(payload: pb.Payload) -> object:
    """
    Decode a payload with the registered codec it names.

    :raises CodecError: if the codec or the key is unknown here, or the bytes are bad
    """
    codec = _CODECS.get(payload.codec)
    if type(codec) is not JSONCodec or payload.blob or payload.encodings:  # else: plain JSON
        payload = open_payload(payload)  # checks it names a codec; undoes payload codecs
        codec = get_codec(payload.codec)
    if isinstance(codec, JSONCodec):  # never holds the bytes and the text at once
        return codec._decode_from(lambda: payload.data)
    try:
        return codec.decode(payload.data)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(
            f"codec {payload.codec!r} could not decode {len(payload.data)} bytes: {exc!r}"
        ) from exc
