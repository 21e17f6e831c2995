"""
The web view as the tests reach it in-process: the ASGI app of ``substantial ui`` over a
test backend, with its lifespan running, behind an ``httpx.AsyncClient``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from substantial._ui import UiSettings, create_app
from substantial.backends import Backend

__all__ = ["csrf_of", "ui_client"]


@asynccontextmanager
async def ui_client(
    backend: Backend, url: str = "memory://", **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the view of ``backend`` (shown as ``url``), with ``UiSettings`` options."""
    guard = create_app(UiSettings(url, refresh=0, **options), backend)
    app = guard.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
            yield client


def csrf_of(page: str) -> str:
    """The CSRF value of a page's forms."""
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "the page has no form with a CSRF value"
    return found[1]
