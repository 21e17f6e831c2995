"""
Search attributes (``Context.set_attributes``): small strings and numbers a run is found
by. Checked here; stored in the run's summary and in an index of keys
``attrs/{name}/{value}/{run}`` (see :mod:`substantial._store.keys`).

A filter compares values as text: ``customer=acme`` matches the string ``"acme"``,
``count=3`` the number 3 (and the string ``"3"``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from substantial.errors import InvalidAttribute
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_TEXT",
    "AttributeValue",
    "check_attributes",
    "from_pb",
    "key_part",
    "parse_where",
    "text_of",
    "to_pb",
]

AttributeValue = str | int | float

#: The most attributes one run may have, and the longest string value (characters).
MAX_ATTRIBUTES = 32
MAX_TEXT = 256
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_NAME_RULE = "a name is a letter or _ then up to 63 of [A-Za-z0-9_]"
_INT64 = 2**63


def check_attributes(
    attributes: Mapping[str, object],
) -> dict[str, AttributeValue | None]:
    """
    The attributes, checked: names are identifiers (at most 64 characters); values are
    strings (at most 256 characters, no control characters), ints (64-bit) or finite
    floats; ``None`` removes an attribute.

    :raises InvalidAttribute: naming the attribute and what is wrong with it
    """
    checked: dict[str, AttributeValue | None] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidAttribute(
                str(name), "a name is a letter or _ then up to 63 of [A-Za-z0-9_]"
            )
        if value is None or type(value) is str:
            if value is not None and (len(value) > MAX_TEXT or not value.isprintable()):
                raise InvalidAttribute(name, f"a string is at most {MAX_TEXT} printable characters")
        elif type(value) is int:
            if not -_INT64 <= value < _INT64:
                raise InvalidAttribute(name, "an int must fit in 64 bits")
        elif type(value) is float:
            if not math.isfinite(value):
                raise InvalidAttribute(name, "a float must be finite")
        else:
            kind = type(value).__name__
            raise InvalidAttribute(name, f"a value is a str, int, float or None, not {kind}")
        checked[name] = value
    return checked


def text_of(value: AttributeValue) -> str:
    """The text a filter compares: the string itself, or the number as Python prints it."""
    return value if isinstance(value, str) else repr(value)


def key_part(text: str) -> str:
    """
    ``text`` as one key component: ``v`` and the text percent-quoted (never empty, never
    ``.`` or ``..``), or, past 120 characters, ``h`` and a hash; the summary decides.
    """
    quoted = quote(text, safe="").replace(".", "%2E").replace("~", "%7E")
    if len(quoted) > 120:
        return "h" + hashlib.sha256(text.encode()).hexdigest()[:40]
    return "v" + quoted


def to_pb(attributes: Mapping[str, AttributeValue]) -> list[pb.Attribute]:
    """The attributes as stored, sorted by name."""
    out = []
    for name in sorted(attributes):
        value = attributes[name]
        if isinstance(value, str):
            out.append(pb.Attribute(name=name, text=value))
        elif isinstance(value, int):
            out.append(pb.Attribute(name=name, integer=value))
        else:
            out.append(pb.Attribute(name=name, number=value))
    return out


def from_pb(stored: Iterable[pb.Attribute]) -> dict[str, AttributeValue]:
    """Stored attributes as a dict; an attribute with no value is left out."""
    found: dict[str, AttributeValue] = {}
    for attribute in stored:
        kind = attribute.WhichOneof("value")
        if kind is not None:
            found[attribute.name] = getattr(attribute, kind)
    return found


def parse_where(conditions: Iterable[str] | Mapping[str, object]) -> dict[str, str]:
    """
    Filters as ``{name: text}``, from ``["customer=acme", ...]`` or a mapping.

    :raises InvalidAttribute: for a condition that is not ``name=value``
    """
    if isinstance(conditions, Mapping):
        pairs: list[tuple[str, object]] = list(conditions.items())
    else:
        pairs = []
        for condition in conditions:
            name, equals, text = condition.partition("=")
            if not equals:
                raise InvalidAttribute(condition, "a filter is name=value")
            pairs.append((name.strip(), text))
    wanted: dict[str, str] = {}
    for name, value in pairs:
        if not _NAME.match(name):
            raise InvalidAttribute(name, _NAME_RULE)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidAttribute(name, f"a filter value is a str, int or float, not {value!r}")
        wanted[name] = text_of(value)
    return wanted
