"""
The JSON codec's internals: the tag names, the encoders, the tables of simple tagged types,
and the helpers that find and rebuild a tagged class. :class:`substantial.codec.JSONCodec`
walks values with them; the format itself is described in :mod:`substantial.codec`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import math
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from substantial._allow import kind_of, name_of
from substantial.errors import CodecError

__all__ = [
    "ASCII_ENCODER",
    "CLASS_KINDS",
    "DECODERS",
    "ENCODABLE",
    "ENCODER",
    "HOW",
    "KIND_NAMES",
    "PLAIN_DECODER",
    "SIMPLE",
    "TAG",
    "Unencodable",
    "by_name",
    "decode_float",
    "decode_plain",
    "is_plain",
    "lookup",
    "make_dataclass",
    "rebuild",
    "registrable",
    "timedelta",
]

TAG = "$t"
ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
)
ASCII_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, allow_nan=False, check_circular=False
)
PLAIN_DECODER = json.JSONDecoder()
_SCAN = PLAIN_DECODER.scan_once  # type: ignore[attr-defined]


def decode_plain(text: str) -> object:
    """
    ``PLAIN_DECODER.decode(text)``, without its two whitespace matches when no whitespace
    surrounds the value (as the encoder writes it): a replay decodes every step result.
    """
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return PLAIN_DECODER.decode(text)  # raises the error decode() would
    if end != len(text):
        return PLAIN_DECODER.decode(text)
    return value


class Unencodable(Exception):
    """Raised inside the walk; each container on the way out adds its part of the path."""

    def __init__(self, value: object, reason: str = "") -> None:
        super().__init__()
        self.type_name = type(value).__qualname__
        self.reason = reason
        self.parts: list[str] = []


def is_plain(v: object) -> bool:
    """Whether ``v`` is JSON as it stands: the fast path that needs no walk."""
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return True
    if t is float:
        return math.isfinite(v)  # type: ignore[arg-type]
    if t is list:
        return all(map(is_plain, v))  # type: ignore[call-overload]
    if t is dict:
        return (
            TAG not in v  # type: ignore[operator]
            and all(type(k) is str for k in v)  # type: ignore[attr-defined]
            and all(map(is_plain, v.values()))  # type: ignore[attr-defined]
        )
    return False


HOW = (
    "allow it with substantial.codec.register_type(), or name it in the annotations "
    "of a workflow or of a step function"
)


def lookup(name: str) -> tuple[type | None, str]:
    """Find ``module:qualname`` among already imported modules, without importing."""
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        return None, f"module {module_name!r} is not imported (the codec never imports)"
    if "<locals>" in qualname:
        return None, "it is defined inside a function; register it with register_type()"
    obj: object = module
    for part in qualname.split("."):  # __dict__, not getattr: a module __getattr__ may import
        obj = getattr(obj, "__dict__", {}).get(part)
        if obj is None:
            return None, f"module {module_name!r} has no attribute {qualname!r}"
    if not isinstance(obj, type):
        return None, f"{qualname!r} is not a class"
    return obj, ""


def by_name() -> dict[str, bool]:
    version = sys.modules["pydantic"].VERSION.split(".")
    return {"by_name": True} if (int(version[0]), int(version[1])) >= (2, 11) else {}


def make_dataclass(cls: type, v: dict[str, Any]) -> object:
    """Call ``cls(**v)``: ``__init__`` and ``__post_init__`` run, and set the other fields."""
    if not isinstance(v, dict):
        raise ValueError(f"expected an object of fields, got {type(v).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(v) - set(fields)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    # init=False fields are ignored (older logs hold them): __init__ sets them
    return cls(**{k: x for k, x in v.items() if fields[k].init})


def decode_float(s: str) -> float:
    if s not in ("nan", "inf", "-inf"):
        raise ValueError(f"not a special float: {s!r}")
    return float(s)


def timedelta(v: list[int]) -> dt.timedelta:
    days, seconds, micros = v
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


SIMPLE: dict[type, tuple[str, Callable[[Any], object]]] = {
    bytes: ("bytes", lambda b: base64.b64encode(b).decode("ascii")),
    dt.datetime: ("datetime", dt.datetime.isoformat),
    dt.date: ("date", dt.date.isoformat),
    dt.time: ("time", dt.time.isoformat),
    dt.timedelta: ("timedelta", lambda d: [d.days, d.seconds, d.microseconds]),
    uuid.UUID: ("uuid", str),
    Decimal: ("decimal", str),
}
DECODERS: dict[str, Callable[[Any], object]] = {
    "float": decode_float,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "dict": lambda pairs: {k: x for k, x in pairs},
    "bytes": lambda s: base64.b64decode(s, validate=True),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": timedelta,
    "uuid": uuid.UUID,
    "decimal": Decimal,
}
KIND_NAMES = {
    "enum": "an Enum",
    "dataclass": "a dataclass",
    "pydantic": "a pydantic model",
    "namedtuple": "a NamedTuple",
}
CLASS_KINDS = frozenset(KIND_NAMES)


def rebuild(cls: type, kind: str, name: str, v: Any) -> object:
    """
    An instance of the tagged class ``cls`` (named ``name``) from its encoded ``v``.

    :raises CodecError: if ``cls`` is not of ``kind``, or does not take ``v``
    """
    if kind_of(cls) != kind:
        raise CodecError(f"cannot resolve class {name!r}: it is not {KIND_NAMES[kind]}")
    try:
        if kind == "enum":
            return cls(v)
        if kind == "namedtuple":
            return cls(*v)
        if kind == "pydantic":
            return cls.model_validate(v, **by_name())  # type: ignore[attr-defined]
        return make_dataclass(cls, v)
    except Exception as exc:
        raise CodecError(f"cannot rebuild {kind} {name!r}: {exc}") from None


def registrable(cls: object) -> str:
    """The name ``cls`` is registered under."""
    if not isinstance(cls, type) or kind_of(cls) is None:
        raise CodecError(
            f"cannot register {cls!r}: not a dataclass, Enum, pydantic model, NamedTuple"
        )
    return name_of(cls)


#: What the JSON codec encodes, for error messages.
ENCODABLE = (
    "the JSON codec encodes None, bool, int, float, str, bytes, list, tuple, dict, set, "
    "frozenset, datetime, date, time, timedelta, UUID, Decimal, and enums, dataclasses, "
    "named tuples and pydantic models of allowed classes"
)
