"""
The buttons that change runs: send an event, cancel, terminate, pause, resume, and cancel
every run a filter selects (those of schedules and queues: ``flow_actions``). Each is a
POST that must carry the page's CSRF value; the first POST shows a confirmation (with
the equivalent ``substantial`` command), the second, with ``confirmed=yes``, acts.
With ``--read-only`` none of them exists.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from substantial._conductor import Conductor
from substantial._core.status import RunStatus
from substantial._store.runs import check_run_id
from substantial._ui.guard import same
from substantial._ui.runs_page import Filters, selected_runs
from substantial._ui.snapshot import SnapshotCache
from substantial._ui.text import cli_command, public_url
from substantial.backends.base import Backend
from substantial.errors import CodecError, InvalidName, InvalidRunId, RunFinished, RunNotFound
from substantial.ops import RunSummary

__all__ = [
    "Confirmation",
    "cancel_selected_command",
    "confirm",
    "guarded",
    "routes",
    "run_commands",
]

MAX_FORM_BYTES = 1 << 20
#: shown on the confirmation of cancel-selected
SHOWN_RUNS = 20


class Pages(Protocol):
    """What the actions need of the application (``app.Ui``)."""

    settings: Any
    backend: Backend
    snapshot: SnapshotCache

    def render(
        self, request: Request, template: str, status: int = 200, **values: Any
    ) -> Response: ...


class Refused(Exception):
    """A write that fails the CSRF or origin check, or a form too big to read."""


async def _form(request: Request, csrf: str) -> dict[str, str]:
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Refused(f"a form from another origin ({origin})")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Refused("a form over 1 MiB")
    fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if not same(fields.get("csrf", ""), csrf):
        raise Refused("a form without this page's CSRF value (reload the page)")
    return fields


def run_commands(backend_url: str, run_id: str) -> dict[str, str]:
    """The CLI commands beside each button of a run's page."""
    return {
        "send": cli_command(backend_url, "send", run_id, "EVENT", "VALUE_JSON"),
        "cancel": cli_command(backend_url, "cancel", run_id),
        "terminate": cli_command(backend_url, "terminate", run_id, "--reason", "REASON"),
        "pause": cli_command(backend_url, "pause", run_id),
        "resume": cli_command(backend_url, "resume", run_id),
    }


def cancel_selected_command(backend_url: str, filters: Filters) -> str:
    """
    The command that cancels what cancel-selected would: ``substantial cancel`` with
    filters, or, since it has no id prefix, ``list --json`` piped through ``jq``.
    """
    words: list[str] = []
    for status in filters.statuses or tuple(RunStatus):
        if not status.finished and status is not RunStatus.CORRUPT:
            words += ["--status", status.value]
    if filters.workflow:
        words += ["--workflow", filters.workflow]
    if filters.started_after or filters.since:
        words += ["--started-after", filters.started_after.isoformat() if filters.started_after
                  else filters.since]  # fmt: skip
    if filters.started_before:
        words += ["--started-before", filters.started_before.isoformat()]
    if filters.queue:
        words += ["--queue", filters.queue]
    if not filters.prefix:
        return cli_command(backend_url, "cancel", *words)
    select = f".[].run_id | select(startswith({json.dumps(filters.prefix)}))"
    backend = shlex.quote(public_url(backend_url))
    return (
        f"{cli_command(backend_url, 'list', *words, '--json')} | jq -r {shlex.quote(select)}"
        f" | xargs -n1 substantial cancel --backend {backend}"
    )


def guarded(ui: Pages, work: Any) -> Any:
    """An endpoint that runs ``work(ui, request, fields)`` on a form that passes the checks."""

    async def endpoint(request: Request) -> Response:
        try:
            fields = await _form(request, ui.settings.csrf)
        except Refused as exc:
            return PlainTextResponse(f"refused: {exc}\n", status_code=403)
        try:
            response: Response = await work(ui, request, fields)
        except (InvalidRunId, InvalidName) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        return response

    return endpoint


def routes(ui: Pages) -> list[Route]:
    """The POST routes, or none in a read-only view."""
    if ui.settings.read_only:
        return []
    return [
        Route(f"/runs/{{run_id}}/{name}", guarded(ui, work), methods=["POST"])
        for name, work in [
            ("send", _send),
            ("cancel", _cancel),
            ("terminate", _terminate),
            ("pause", _pause),
            ("resume", _resume),
        ]
    ] + [Route("/cancel-selected", guarded(ui, _cancel_selected), methods=["POST"])]


@dataclass
class Confirmation:
    """What the confirmation page of an action shows (``confirm.html``)."""

    title: str
    command: str = ""
    run_id: str = ""
    fields: dict[str, str] = dataclass_field(default_factory=dict)
    button: str = ""
    problem: str = ""
    warning: str = ""
    shown: str | None = None
    runs: list[RunSummary] | None = None
    more: int = 0
    #: where "Go back" leads (default: the run's page, or the runs page)
    back: str = ""


def confirm(ui: Pages, request: Request, page: Confirmation, status: int = 200) -> Response:
    return ui.render(request, "confirm.html", status, **vars(page))


def _back(run_id: str, said: str) -> Response:
    return RedirectResponse(f"/runs/{quote(run_id, safe='')}?said={quote(said)}", 303)


async def _act(ui: Pages, request: Request, page: Confirmation, said: str, act: Any) -> Response:
    try:
        await act(Conductor(ui.backend).handle(page.run_id))
    except (RunNotFound, RunFinished, CodecError) as exc:
        page.problem = str(exc)
        return confirm(ui, request, page, 409)
    ui.snapshot.invalidate()
    return _back(page.run_id, said)


async def _send(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    run_id = check_run_id(request.path_params["run_id"])
    name = fields.get("event", "").strip()
    raw = fields.get("value", "").strip()
    page = Confirmation(
        f"Send event {name!r}",
        cli_command(ui.settings.backend_url, "send", run_id, name or "EVENT", raw or "null"),
        run_id,
        {"event": name, "value": raw},
        "Yes, send",
    )
    if not name:
        page.problem = "give the event's name"
        return confirm(ui, request, page, 400)
    try:
        value = json.loads(raw) if raw else None
    except ValueError as exc:
        page.problem = f"the value is not JSON: {exc}"
        return confirm(ui, request, page, 400)
    if fields.get("confirmed") != "yes":
        page.shown = json.dumps(value, ensure_ascii=False)
        return confirm(ui, request, page)
    return await _act(ui, request, page, f"sent {name}", lambda h: h.send(name, value))


async def _cancel(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    run_id = check_run_id(request.path_params["run_id"])
    command = cli_command(ui.settings.backend_url, "cancel", run_id)
    page = Confirmation("Cancel this run", command, run_id, button="Yes, cancel the run")
    if fields.get("confirmed") != "yes":
        return confirm(ui, request, page)
    return await _act(ui, request, page, "cancel requested", lambda h: h.cancel())


async def _terminate(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    run_id = check_run_id(request.path_params["run_id"])
    reason = fields.get("reason", "").strip()
    words = ["terminate", run_id] + (["--reason", reason] if reason else [])
    page = Confirmation(
        "Terminate this run",
        cli_command(ui.settings.backend_url, *words),
        run_id,
        {"reason": reason},
        "Yes, terminate the run",
        warning="No finally block or compensation of the run will run.",
    )
    if fields.get("confirmed") != "yes":
        return confirm(ui, request, page)
    return await _act(ui, request, page, "terminate requested", lambda h: h.terminate(reason))


async def _pause(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    run_id = check_run_id(request.path_params["run_id"])
    command = cli_command(ui.settings.backend_url, "pause", run_id)
    page = Confirmation(
        "Pause this run", command, run_id, button="Yes, pause the run",
        warning="No agent runs it until it is resumed; a step running now finishes first.",
    )  # fmt: skip
    if fields.get("confirmed") != "yes":
        return confirm(ui, request, page)
    return await _act(ui, request, page, "pause requested", lambda h: h.pause())


async def _resume(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    run_id = check_run_id(request.path_params["run_id"])
    command = cli_command(ui.settings.backend_url, "resume", run_id)
    page = Confirmation("Resume this run", command, run_id, button="Yes, resume the run")
    if fields.get("confirmed") != "yes":
        return confirm(ui, request, page)
    return await _act(ui, request, page, "resume requested", lambda h: h.resume())


async def _cancel_selected(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    filters = Filters.parse(parse_qs(fields.get("filters", "")))
    snapshot = await ui.snapshot.fresh()
    runs = selected_runs(snapshot, filters, datetime.now(UTC))
    page = Confirmation(
        f"Cancel {len(runs)} unfinished run(s)",
        cancel_selected_command(ui.settings.backend_url, filters),
        fields={"filters": filters.query(page="")},
        button=f"Yes, cancel {len(runs)}",
        runs=runs[:SHOWN_RUNS],
        more=max(0, len(runs) - SHOWN_RUNS),
    )
    if not filters.narrowed:
        page.problem = "choose a filter first"
        return confirm(ui, request, page, 400)
    if fields.get("confirmed") != "yes":
        return confirm(ui, request, page)
    conductor = Conductor(ui.backend)
    done = skipped = 0
    for run in runs:
        try:
            await conductor.handle(run.run_id).cancel()
            done += 1
        except (RunNotFound, RunFinished):
            skipped += 1
    ui.snapshot.invalidate()
    note = f"cancel requested for {done} run(s)" + (f", {skipped} had ended" if skipped else "")
    return RedirectResponse(f"/?{filters.query(page='')}&said={quote(note)}", 303)
