"""
The buttons of the flow-control pages: pause, resume and trigger a cron schedule; pause
and resume a queue. Like a run's actions (``actions``): CSRF-checked POSTs, a
confirmation with the equivalent ``substantial`` command first, none in a read-only view.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from substantial._conductor import Conductor
from substantial._store.keys import check_name
from substantial._ui.actions import Confirmation, Pages, confirm, guarded
from substantial._ui.text import cli_command
from substantial.errors import ScheduleNotFound

__all__ = ["routes", "schedule_commands"]

#: a schedule's verbs: the confirmation's title and button, and what the page then says
SCHEDULE_VERBS = {
    "pause": ("Pause schedule", "Yes, pause it", "paused"),
    "resume": ("Resume schedule", "Yes, resume it", "resumed"),
    "trigger": ("Start a run of schedule", "Yes, start a run now", "triggered"),
}
WARNINGS = {
    "pause": "It starts no runs until resumed; ticks that fall meanwhile never run.",
    "resume": "It starts runs again from the next tick (ticks skipped while paused stay skipped).",
    "trigger": "This starts one run now, outside the cron.",
}


def routes(ui: Pages) -> list[Route]:
    """The POST routes, or none in a read-only view."""
    if ui.settings.read_only:
        return []
    return [
        Route("/schedules/{schedule_id}/{verb}", guarded(ui, _schedule), methods=["POST"]),
        Route("/queues/pause", guarded(ui, _queue), methods=["POST"]),
        Route("/queues/resume", guarded(ui, _queue), methods=["POST"]),
    ]


def schedule_commands(backend_url: str, schedule_id: str) -> dict[str, str]:
    """The CLI commands beside a schedule's buttons."""
    return {verb: cli_command(backend_url, verb, schedule_id, group="schedule")
            for verb in SCHEDULE_VERBS}  # fmt: skip


def _said(where: str, note: str) -> Response:
    return RedirectResponse(f"{where}?said={quote(note)}", 303)


async def _schedule(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    schedule_id = check_name(request.path_params["schedule_id"], "schedule")
    verb = request.path_params["verb"]
    if verb not in SCHEDULE_VERBS:
        return Response("no such action\n", 404, media_type="text/plain")
    title, button, past = SCHEDULE_VERBS[verb]
    page = Confirmation(
        f"{title} {schedule_id}",
        cli_command(ui.settings.backend_url, verb, schedule_id, group="schedule"),
        button=button,
        warning=WARNINGS[verb],
        back="/schedules",
    )
    if fields.get("confirmed") != "yes":
        return confirm(ui, request, page)
    schedule = Conductor(ui.backend).get_schedule(schedule_id)
    try:
        if verb == "trigger":
            handle = await schedule.trigger()
            ui.snapshot.invalidate()
            where = f"/runs/{quote(handle.run_id, safe='')}"
            return _said(where, f"started by schedule {schedule_id}")
        await getattr(schedule, verb)()
    except ScheduleNotFound as exc:
        page.problem = str(exc)
        return confirm(ui, request, page, 409)
    return _said("/schedules", f"schedule {schedule_id} {past}")


async def _queue(ui: Pages, request: Request, fields: dict[str, str]) -> Response:
    verb = request.url.path.rpartition("/")[2]
    name = fields.get("queue", "").strip()
    page = Confirmation(
        f"{verb.capitalize()} queue {name}",
        cli_command(ui.settings.backend_url, verb, name or "NAME", group="queue"),
        fields={"queue": name},
        button=f"Yes, {verb} the queue",
        warning="No agent claims its runs until it is resumed (runs in flight finish their"
        " wake-up); starts, events and timers still land in it."
        if verb == "pause"
        else "",
        back="/limits",
    )
    try:
        check_name(name, "queue")
    except ValueError as exc:
        page.problem = str(exc)
        return confirm(ui, request, page, 400)
    if fields.get("confirmed") != "yes":
        return confirm(ui, request, page)
    conductor = Conductor(ui.backend)
    await (conductor.pause_queue(name) if verb == "pause" else conductor.resume_queue(name))
    return _said("/limits", f"queue {name} {verb}d")
