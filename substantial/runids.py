"""
The run-id rule, in one place, and the ids the library derives from other ids.

A run id is 1-200 ASCII letters, digits and ``._:@+=,-``, starting with a letter or a
digit. Every key built from such an id holds on every backend: it is never ``.`` or
``..`` and has no ``/``, and the longest key component, a schedule key's
``{due:015d}-{run}~{tag}`` on the files backend, stays under the 255 bytes of a file
name (200 + 17 + a 12-character tag = 229).

The rule is checked wherever an id enters: ``Conductor.start``, ``Conductor.handle``
(and ``Handle``), ``Context.child``/``start_child`` when the workflow chooses the id,
the CLI, and schedule keys read by agents (:func:`is_stored_run_id`). Ids the library
derives (a child's ``{parent}-c{position}``, a continuation's ``{root}.{n}``) go
through :func:`derived_run_id`, which keeps them within the rule.
"""

from __future__ import annotations

import hashlib
import re

from substantial.errors import InvalidRunId

__all__ = [
    "MAX_RUN_ID_LENGTH",
    "RUN_ID_RULE",
    "check_run_id",
    "derived_run_id",
    "is_stored_run_id",
]

#: The longest run id, in characters (= bytes: ids are ASCII).
MAX_RUN_ID_LENGTH = 200
#: The rule, as error messages state it.
RUN_ID_RULE = (
    f"use 1-{MAX_RUN_ID_LENGTH} letters, digits or ._:@+=,- starting with a letter or digit"
)

_CHARACTERS = r"[A-Za-z0-9][A-Za-z0-9._:@+=,-]"
_RUN_ID = re.compile(rf"{_CHARACTERS}{{0,{MAX_RUN_ID_LENGTH - 1}}}")
_STORED_RUN_ID = re.compile(rf"{_CHARACTERS}*")
#: Hex digits of the digest that stands in for the cut part of a long derived id.
_DIGEST = 16


def check_run_id(run_id: str, where: str = "") -> str:
    """
    Check a run id against the rule.

    :param where: where the id came from, for the message (e.g. ``child of run 'p'``)
    :return: ``run_id``
    :raises InvalidRunId: unless ``run_id`` is 1-200 letters, digits or ``._:@+=,-``,
        starting with a letter or digit
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidRunId(run_id, RUN_ID_RULE, where)
    return run_id


def is_stored_run_id(run_id: str) -> bool:
    """
    Whether a run id read from storage (a schedule key) can name a run: the rule's
    characters, at any length, since versions before the 200 limit made longer ids and
    their runs must still finish. Nothing outside these characters was ever a run.
    """
    return _STORED_RUN_ID.fullmatch(run_id) is not None


def derived_run_id(base: str, suffix: str) -> str:
    """
    ``base + suffix`` if that obeys the rule; otherwise ``base`` cut short, then a digest
    of the whole of ``base``, then ``suffix``: still unique per ``(base, suffix)``, and
    the same on every replay.

    :param base: a run id (a parent, or the root of a continuation chain)
    :param suffix: ``-c{position}`` or ``.{n}``, short and of the rule's characters
    """
    joined = base + suffix
    if len(joined) <= MAX_RUN_ID_LENGTH:
        return joined
    digest = hashlib.sha256(base.encode()).hexdigest()[:_DIGEST]
    keep = MAX_RUN_ID_LENGTH - len(suffix) - _DIGEST - 1
    return check_run_id(f"{base[:keep]}-{digest}{suffix}")
