"""
The search-attribute index: ``attrs/{name}/{value}/{run}``, one key per attribute a run
has (content: when it was written, epoch ms). Written with create before the summary
that shows the attribute, so the index holds every run a summary says has it; entries
a run no longer matches (it changed the value, it was deleted) are stale, and harmless:
a search checks each run's summary, and deletes the entries it finds stale.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio

from substantial._core.attributes import AttributeValue, key_part, text_of
from substantial._core.clock import now_ms
from substantial._store.keys import attr_key, attr_prefix
from substantial.backends.base import Backend

__all__ = ["index_key", "index_prefix", "unindex", "write_index"]


def index_prefix(name: str, text: str) -> str:
    """Where the runs whose attribute ``name`` reads ``text`` are listed."""
    return attr_prefix(name, key_part(text))


def index_key(name: str, value: AttributeValue, run_id: str) -> str:
    return attr_key(name, key_part(text_of(value)), run_id)


def _changed(
    these: Mapping[str, AttributeValue], those: Mapping[str, AttributeValue]
) -> list[tuple[str, AttributeValue]]:
    return [(n, v) for n, v in these.items() if n not in those or text_of(those[n]) != text_of(v)]


async def write_index(
    backend: Backend,
    run_id: str,
    attributes: Mapping[str, AttributeValue],
    known: Mapping[str, AttributeValue],
) -> None:
    """Create the index entries of ``attributes`` not already ``known`` (the summary's)."""
    stamp = str(now_ms()).encode()
    async with anyio.create_task_group() as tg:
        for name, value in _changed(attributes, known):
            tg.start_soon(backend.create, index_key(name, value, run_id), stamp)


async def unindex(
    backend: Backend,
    run_id: str,
    old: Mapping[str, AttributeValue],
    new: Mapping[str, AttributeValue],
) -> None:
    """Delete the entries of ``old`` attributes the run no longer has (as in ``new``)."""
    async with anyio.create_task_group() as tg:
        for name, value in _changed(old, new):
            tg.start_soon(backend.delete, index_key(name, value, run_id))
