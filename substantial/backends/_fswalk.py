"""
The files backend's listing: a walk of the folder tree in key order, that opens no folder
it need not (``after``, ``before``) and reads a record file as the folder of its keys.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass

from substantial.backends._files import RESERVED
from substantial.backends._fsrecords import LegacyLog, RecordKeys
from substantial.backends._records import Families

__all__ = ["WalkScope", "walk"]


@dataclass(frozen=True, slots=True)
class WalkScope:
    """What a walk needs of its backend: the root folder and the record-file families."""

    root: str
    families: Families
    records: RecordKeys


def walk(
    scope: WalkScope,
    folder: str,
    base: str,
    partial: str,
    after: str | None,
    before: str | None = None,
    inner: bool = False,
) -> Iterator[str]:
    """
    Keys under ``folder`` (named ``base`` + entry) whose entry name starts with
    ``partial``, greater than ``after`` and less than ``before``, in order. An
    ``inner`` folder found empty and wholly before ``before`` is removed.

    A subfolder ``x`` sorts as ``x/``: every key under it starts with that, and no
    entry name contains ``/``, so comparing the entries' ``x/`` with file names orders
    whole keys correctly (``x-1`` < ``x/a``, since ``-`` < ``/``).
    """
    candidates: list[tuple[str, bool]] = []
    logs = bool(scope.families)
    empty = True
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name, empty = entry.name, False
                if not name.startswith(partial) or (not base and name in RESERVED):
                    continue
                # a record file stands for its folder
                is_dir = entry.is_dir(follow_symlinks=False) or (
                    logs and scope.families.folder(base + name)
                )
                full = base + name + "/" if is_dir else base + name
                # Skip what lies wholly at or before `after`; enter a folder `after` is in.
                if after is not None and full <= after and not (is_dir and after.startswith(full)):
                    continue
                if before is not None and full >= before:  # and all keys under it
                    continue
                candidates.append((full, is_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    if empty and inner and before is not None and not before.startswith(base):
        with suppress(OSError):  # not empty any more, or gone
            os.rmdir(folder)
    # A heap rather than a sort: a page of `limit` keys from a big folder is O(n).
    heapq.heapify(candidates)
    while candidates:
        full, is_dir = heapq.heappop(candidates)
        if not is_dir:
            yield full
            continue
        found = walk(scope, f"{scope.root}/{full[:-1]}", full, "", after, before, True)
        if logs and scope.families.folder(full[:-1]):
            # A listing of more than one log (``runs/``) shows what it can of a damaged
            # one; reading it, or listing it alone, raises CorruptLog.
            with suppress(LegacyLog):
                found = scope.records.keys(full[:-1], "", after, prefix=True)
        yield from found
