"""
The classes a payload may name: the codec's allow-list.

A log is input someone else may have written, so the JSON codec rebuilds a tagged object
(dataclass, Enum, pydantic model, NamedTuple) only if its class is *allowed*:

* registered with :func:`substantial.codec.register_type` (or ``JSONCodec(types=...)``);
* or named in the annotations of a ``@workflow`` function (parameters and return) or
  of a step function given to ``Context.save`` (its return), found recursively through
  generics (``list[Order]``, ``Order | None``, ``dict[str, Order]``, ``Annotated``...)
  and through the field annotations of the classes found.

Annotations are read lazily (at the first lookup after a function is noted), so a
workflow may name a class defined further down its module. Nothing here imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import threading
import types
import typing
import weakref
from collections.abc import Callable
from enum import Enum
from typing import Any

__all__ = ["allowed", "kind_of", "name_of", "note_function", "register"]


def kind_of(cls: type) -> str | None:
    """The tag for instances of a user class, or None if the codec cannot rebuild it."""
    if issubclass(cls, Enum):
        return "enum"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and issubclass(cls, pydantic.BaseModel):
        return "pydantic"
    if issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return "namedtuple"
    return None


def name_of(cls: type) -> str:
    """How payloads name ``cls``: ``module:qualname``."""
    return f"{cls.__module__}:{cls.__qualname__}"


_lock = threading.Lock()
#: classes registered with register_type(), by name
_REGISTERED: dict[str, type] = {}
#: classes found in annotations, by name
_ANNOTATED: dict[str, type] = {}
_pending: list[_Source] = []  # functions noted, annotations not read yet
_unresolved: list[_Source] = []  # annotations that did not resolve: retried on a miss
_noted: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()
#: a weak reference to the function last found in ``_noted`` (a step called in a loop)
_last: Callable[[], Any] = type(None)  # called, it gives None: no function yet
_walked: weakref.WeakSet[type] = weakref.WeakSet()


def register(name: str, cls: type) -> None:
    _REGISTERED[name] = cls


def note_function(
    fn: Callable[..., Any], *, skip_first: bool = False, return_only: bool = False
) -> None:
    """
    Allow the classes named in ``fn``'s annotations. Cheap to call often: a function
    without annotations, or one already noted, costs a dict look-up.

    :param skip_first: leave out the first parameter (a workflow's ``Context``)
    :param return_only: read only the return annotation (a step's result)
    """
    global _last
    target: Any = fn.func if isinstance(fn, functools.partial) else fn
    if _last() is target:  # a step called in a loop: one identity check
        return
    annotations = getattr(target, "__annotations__", None)
    if not annotations or (return_only and "return" not in annotations):
        return
    try:
        if target in _noted:
            _last = weakref.ref(target)
            return
        _noted.add(target)
    except TypeError:  # not weak-referenceable: note it every time
        pass
    keys = list(annotations)
    if return_only:
        keys = ["return"]
    elif skip_first:
        first = getattr(getattr(target, "__code__", None), "co_varnames", ())[:1]
        keys = [key for key in keys if key not in first]
    with _lock:
        _pending.append(_Source(target, tuple(keys)))


def allowed(name: str, *, annotated: bool = True) -> type | None:
    """
    The allowed class called ``name`` (``module:qualname``), or ``None``.

    :param annotated: whether classes found in annotations count, not only registered
    """
    cls = _REGISTERED.get(name)
    if cls is not None or not annotated:
        return cls
    if _pending:
        _read(retry=False)
    cls = _ANNOTATED.get(name)
    if cls is None and _unresolved:
        _read(retry=True)
        cls = _ANNOTATED.get(name)
    return cls


@dataclasses.dataclass(frozen=True)
class _Source:
    """Annotations of ``fn`` still to read: those called ``keys``."""

    fn: Any
    keys: tuple[str, ...]


def _read(*, retry: bool) -> None:
    with _lock:
        sources = _unresolved[:] if retry else _pending[:]
        if retry:
            _unresolved.clear()
        else:
            _pending.clear()
        for source in sources:
            hints, failed = _hints(source.fn, source.keys)
            if failed:
                _unresolved.append(_Source(source.fn, failed))
            for hint in hints:
                _walk(hint)


def _hints(fn: Any, keys: tuple[str, ...]) -> tuple[list[object], tuple[str, ...]]:
    """
    ``fn``'s annotations called ``keys``, each resolved on its own, so that one name
    imported only under ``TYPE_CHECKING`` does not hide the others.

    :return: the resolved hints, and the keys that did not resolve
    """
    raw: dict[str, object] = getattr(fn, "__annotations__", None) or {}
    globalns = getattr(fn, "__globals__", {})
    code, closure = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    localns: dict[str, object] = {}
    for name, cell in zip(code.co_freevars if code else (), closure, strict=False):
        with contextlib.suppress(ValueError):  # an empty cell
            localns[name] = cell.cell_contents
    hints: list[object] = []
    failed: list[str] = []
    for key in keys:
        if key not in raw:
            continue
        holder = types.SimpleNamespace(__annotations__={key: raw[key]})
        try:
            resolved = typing.get_type_hints(holder, globalns, localns, include_extras=True)
        except Exception:  # a name not defined (yet): tried again on a miss
            failed.append(key)
            continue
        hints.append(resolved[key])
    return hints, tuple(failed)


def _walk(hint: object) -> None:
    """Add every taggable class ``hint`` names, and those its classes' fields name."""
    alias_value = getattr(hint, "__value__", None)  # a `type X = ...` alias (3.12)
    if alias_value is not None and not isinstance(hint, type):
        _walk(alias_value)
        return
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        _walk(supertype)
        return
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        for value in typing.get_args(hint):
            if isinstance(value, Enum):
                _walk(type(value))
        return
    if origin is not None:
        _walk(origin)
        for arg in typing.get_args(hint):
            _walk(arg)
        return
    if not isinstance(hint, type) or isinstance(hint, types.GenericAlias) or hint in _walked:
        return
    kind = kind_of(hint)
    if kind is None:
        return
    _walked.add(hint)
    _ANNOTATED[name_of(hint)] = hint
    for field_hint in _field_hints(hint, kind):
        _walk(field_hint)


def _field_hints(cls: type, kind: str) -> list[object]:
    if kind == "enum":
        return []
    if kind == "pydantic":
        return [f.annotation for f in cls.model_fields.values()]  # type: ignore[attr-defined]
    try:
        return list(typing.get_type_hints(cls, include_extras=True).values())
    except Exception:  # a field annotation that does not resolve: take those that are types
        raw = getattr(cls, "__annotations__", {})
        return [hint for hint in raw.values() if not isinstance(hint, str)]
