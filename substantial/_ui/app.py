"""The Starlette application: settings, routes, and the pages' rendering."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from substantial._core.status import RunStatus
from substantial._store.runs import check_run_id
from substantial._ui import actions, flow_actions, text
from substantial._ui.flow_pages import load_limits, load_queues, load_schedules
from substantial._ui.guard import Guard, new_csrf
from substantial._ui.run_page import load_run_page, run_doing
from substantial._ui.runs_page import RANGES, Filters, runs_page
from substantial._ui.snapshot import SnapshotCache
from substantial.backends import Backend, from_url
from substantial.errors import BackendError, CorruptLog, RunNotFound

__all__ = ["UiSettings", "create_app"]

HERE = Path(__file__).parent


@dataclass(frozen=True)
class UiSettings:
    """
    :ivar backend_url: the store to show (its password and secrets are never shown)
    :ivar read_only: hide and refuse every action
    :ivar token: required on every request when set
    :ivar refresh: seconds between the runs page's refreshes (0: none)
    :ivar hosts: the host names requests may address (empty: any); the CLI sets the
        loopback names when it serves on loopback without a token
    :ivar csrf: the value every form must send back (random per process)
    """

    backend_url: str
    read_only: bool = False
    token: str | None = None
    refresh: float = 5.0
    hosts: tuple[str, ...] = ()
    csrf: str = field(default_factory=new_csrf)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=text.time_text,
        duration=text.duration_text,
        json=text.json_text,
        call_args=text.call_args,
        ms_time=text.ms_time,
        when_ms=text.time_ms_text,
    )
    return env


class Ui:
    """What the routes share: settings, the backend, the summaries, the templates."""

    def __init__(self, settings: UiSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.snapshot = SnapshotCache(backend)
        self.env = _environment()

    def render(self, request: Request, template: str, status: int = 200, **values: Any) -> Response:
        page = self.env.get_template(template).render(
            request=request,
            settings=self.settings,
            backend=text.public_url(self.settings.backend_url),
            statuses=[s.value for s in RunStatus if s is not RunStatus.CORRUPT],
            **values,
        )
        return HTMLResponse(page, status_code=status)

    async def runs(self, request: Request) -> Response:
        filters = Filters.parse(parse_qs(request.url.query))
        try:
            snapshot = await self.snapshot.get()
        except BackendError as exc:
            return self.render(request, "trouble.html", 503, problem=f"backend unreachable: {exc}")
        now = datetime.now(UTC)
        page = runs_page(snapshot, filters, now)
        return self.render(
            request, "runs.html", page=page, ranges=list(RANGES), now=now,
            trouble=self.snapshot.trouble,
            cancel_command=actions.cancel_selected_command(self.settings.backend_url, filters),
        )  # fmt: skip

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            check_run_id(run_id)
        except ValueError as exc:
            return self.render(request, "trouble.html", 404, problem=str(exc))
        raw_page = request.query_params.get("events", "1")
        now = datetime.now(UTC)
        try:
            page = await load_run_page(
                self.backend, run_id, int(raw_page) if raw_page.isdigit() else 1, now
            )
        except RunNotFound:
            return self.render(request, "trouble.html", 404, problem=f"no run {run_id!r}")
        except CorruptLog as exc:
            return self.render(request, "trouble.html", 500, problem=f"unreadable log: {exc}")
        except BackendError as exc:
            return self.render(request, "trouble.html", 503, problem=f"backend unreachable: {exc}")
        return self.render(
            request, "run.html", page=page, run=page.details.summary, now=now,
            doing=run_doing(page.details.summary, page.timeline, now, page.concurrency_key),
            said=request.query_params.get("said", ""),
            commands=actions.run_commands(self.settings.backend_url, run_id),
        )  # fmt: skip

    async def schedules(self, request: Request) -> Response:
        try:
            rows = await load_schedules(self.backend, await self.snapshot.get())
        except BackendError as exc:
            return self.render(request, "trouble.html", 503, problem=f"backend unreachable: {exc}")
        commands = {
            row.info.id: flow_actions.schedule_commands(self.settings.backend_url, row.info.id)
            for row in rows
        }
        return self.render(request, "schedules.html", rows=rows, commands=commands)

    async def limits(self, request: Request) -> Response:
        try:
            snapshot = await self.snapshot.get()
            limits = await load_limits(self.backend)
            queues = await load_queues(
                self.backend, snapshot, await load_schedules(self.backend, snapshot)
            )
        except BackendError as exc:
            return self.render(request, "trouble.html", 503, problem=f"backend unreachable: {exc}")
        url = self.settings.backend_url
        return self.render(
            request, "limits.html", limits=limits, queues=queues,
            pause_command=text.cli_command(url, "pause", "NAME", group="queue"),
            resume_command=text.cli_command(url, "resume", "NAME", group="queue"),
        )  # fmt: skip


def create_app(
    settings: UiSettings, backend: Backend | None = None, *, close_backend: bool | None = None
) -> Guard:
    """
    The web view as an ASGI application.

    :param backend: the store to show; by default one opened from ``settings.backend_url``
    :param close_backend: close the store when the application stops (default: when it
        opened the store itself)
    """
    store = backend if backend is not None else from_url(settings.backend_url)
    closes = backend is None if close_backend is None else close_backend
    ui = Ui(settings, store)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            await ui.snapshot.start(tasks)
            try:
                yield
            finally:
                ui.snapshot.stop()
                tasks.cancel_scope.cancel()
        if closes:
            with anyio.CancelScope(shield=True):
                await store.aclose()

    routes = [
        Route("/", ui.runs),
        Route("/runs/{run_id}", ui.run),
        Route("/schedules", ui.schedules),
        Route("/limits", ui.limits),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        *actions.routes(ui),
        *flow_actions.routes(ui),
    ]
    return Guard(Starlette(routes=routes, lifespan=lifespan), settings.token, settings.hosts)
