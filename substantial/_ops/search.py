"""
Finding runs by search attribute through the index (:mod:`substantial._store.attrs`):
a filter lists the index entries of one of its conditions and reads only those runs'
summaries, never every log. Entries a summary contradicts are stale: deleted here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from substantial._core.attributes import AttributeValue, text_of
from substantial._store.attrs import index_prefix
from substantial.backends.base import Backend

__all__ = ["indexed_runs", "matches_where", "prune_stale", "search"]

PAGE = 1000


class _Summary(Protocol):
    @property
    def attributes(self) -> Mapping[str, AttributeValue]: ...
    @property
    def updated(self) -> datetime | None: ...


_S = TypeVar("_S", bound=_Summary)  # the listing's RunSummary


async def search(
    backend: Backend,
    wanted: Mapping[str, str],
    summaries: Callable[[Backend, Sequence[str]], Awaitable[Sequence[_S | None]]],
) -> list[_S]:
    """
    The summaries of the runs with every wanted attribute, found through the index of
    the first; ``summaries`` reads those of a page of run ids (None: no such run).
    Entries a summary contradicts are pruned.
    """
    if not wanted:
        return []
    first = dict([next(iter(wanted.items()))])
    indexed = await indexed_runs(backend, wanted)
    found: list[_S] = []
    stale: list[tuple[str, datetime | None]] = []
    for start in range(0, len(indexed), PAGE):
        page = indexed[start : start + PAGE]
        for (key, _), summary in zip(
            page, await summaries(backend, [run_id for _, run_id in page]), strict=True
        ):
            if summary is None:
                stale.append((key, None))
            elif matches_where(summary.attributes, wanted):
                found.append(summary)
            elif not matches_where(summary.attributes, first):
                stale.append((key, summary.updated))
    await prune_stale(backend, stale)
    return found


async def indexed_runs(backend: Backend, wanted: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(index key, run id)`` of every run indexed under the filter's first condition."""
    name, text = next(iter(wanted.items()))
    keys = await backend.list_all(index_prefix(name, text))
    return [(key, key.rpartition("/")[2]) for key in keys]


def matches_where(attributes: Mapping[str, AttributeValue], wanted: Mapping[str, str]) -> bool:
    """Whether ``attributes`` has every wanted one, compared as text."""
    return all(n in attributes and text_of(attributes[n]) == t for n, t in wanted.items())


async def prune_stale(
    backend: Backend,
    candidates: Sequence[tuple[str, datetime | None]],
) -> None:
    """
    Delete index entries whose run's summary does not have the attribute: the run is
    gone (``None``), or its summary was written after the entry (so it is no summary
    that has not caught up with the entry yet).
    """
    keys = [key for key, _ in candidates]
    entries = await backend.get_many(keys)
    for (key, updated), entry in zip(candidates, entries, strict=True):
        if entry is None:
            continue
        try:
            written = datetime.fromtimestamp(int(entry[0]) / 1000, UTC)
        except ValueError:
            written = None
        if updated is None or written is None or updated > written:
            await backend.delete(key, entry[1])
