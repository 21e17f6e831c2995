"""Flow control from the terminal: pause and resume runs and queues; cron schedules."""

from __future__ import annotations

import click

from substantial._cli.common import backend_option, run_id_argument, with_backend
from substantial._cli.formatting import json_text
from substantial._cli.surgery import with_filters
from substantial._client.limits import LimitInfo
from substantial._client.schedules import ScheduleInfo
from substantial._conductor import Conductor
from substantial.backends import Backend

__all__ = ["COMMANDS"]


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
def pause(backend_url: str | None, run_id: str) -> None:
    """
    Pause a run: no agent runs its code until `resume` (a step running now finishes
    first). It keeps taking events, which wait in its inbox. Status: paused.
    """
    with_backend(backend_url, lambda backend: Conductor(backend).handle(run_id).pause())
    click.echo(f"pause requested for {run_id}")


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
def resume(backend_url: str | None, run_id: str) -> None:
    """Resume a paused run where it was."""
    with_backend(backend_url, lambda backend: Conductor(backend).handle(run_id).resume())
    click.echo(f"resume requested for {run_id}")


@click.group()
def queue() -> None:
    """Pause and resume whole queues (every agent on the backend obeys)."""


@queue.command("pause")
@backend_option
@click.argument("name")
def queue_pause(backend_url: str | None, name: str) -> None:
    """Pause queue NAME: no agent claims its runs until `queue resume`."""
    with_backend(backend_url, lambda backend: Conductor(backend).pause_queue(name))
    click.echo(f"queue {name} paused")


@queue.command("resume")
@backend_option
@click.argument("name")
def queue_resume(backend_url: str | None, name: str) -> None:
    """Resume queue NAME."""
    with_backend(backend_url, lambda backend: Conductor(backend).resume_queue(name))
    click.echo(f"queue {name} resumed")


@queue.command("status")
@backend_option
@click.argument("name")
def queue_status(backend_url: str | None, name: str) -> None:
    """Print `paused` or `running` for queue NAME."""

    async def body(backend: Backend) -> bool:
        return await Conductor(backend).queue_paused(name)

    click.echo("paused" if with_backend(backend_url, body) else "running")


@click.group()
def schedule() -> None:
    """List and steer cron schedules (made in code with Conductor.schedule)."""


@schedule.command("list")
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def schedule_list(backend_url: str | None, as_json: bool) -> None:
    """Every schedule: id, cron, time zone, state, next tick, last run."""

    async def body(backend: Backend) -> list[ScheduleInfo]:
        return [await s.describe(ticks=1) for s in await Conductor(backend).schedules()]

    for info in with_backend(backend_url, body):
        next_tick = info.next_ticks[0].isoformat() if info.next_ticks else "-"
        state = "paused" if info.paused else "active"
        if as_json:
            fields = {
                "id": info.id, "workflow": info.workflow, "cron": info.cron,
                "timezone": info.timezone, "catchup": info.catchup, "state": state,
                "queue": info.queue, "next_tick": next_tick if info.next_ticks else None,
                "last_run_id": info.last_run_id,
            }  # fmt: skip
            click.echo(json_text(fields))
        else:
            click.echo(
                f"{info.id}  {info.cron!r} {info.timezone}  {state}  {info.workflow}  "
                f"next {next_tick}  last {info.last_run_id or '-'}"
            )


def _steer(verb: str, past: str) -> click.Command:
    @click.command(verb, help=f"{verb.capitalize()} schedule ID.")
    @backend_option
    @click.argument("schedule_id", metavar="ID")
    def command(backend_url: str | None, schedule_id: str) -> None:
        async def body(backend: Backend) -> str:
            found = Conductor(backend).get_schedule(schedule_id)
            if verb == "trigger":
                return f"started run {(await found.trigger()).run_id}"
            await getattr(found, verb)()
            return f"schedule {schedule_id} {past}"

        click.echo(with_backend(backend_url, body))

    return command


for _verb, _past in (("pause", "paused"), ("resume", "resumed"), ("delete", "deleted")):
    schedule.add_command(_steer(_verb, _past))
schedule.add_command(_steer("trigger", ""))


@click.command("limits")
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def limits_command(backend_url: str | None, as_json: bool) -> None:
    """Every named step limit with its current use (slots held, starts in the window)."""

    async def body(backend: Backend) -> list[LimitInfo]:
        return await Conductor(backend).limits()

    for info in with_backend(backend_url, body):
        per = info.per.total_seconds() if info.per is not None else None
        if as_json:
            fields = {
                "name": info.name, "concurrency": info.concurrency, "in_use": info.in_use,
                "rate": info.rate, "per_seconds": per, "started_in_window": info.started_in_window,
            }  # fmt: skip
            click.echo(json_text(fields))
            continue
        parts = []
        if info.concurrency is not None:
            parts.append(f"{info.in_use}/{info.concurrency} running")
        if info.rate is not None:
            parts.append(f"{info.started_in_window}/{info.rate} started per {per:g}s")
        click.echo(f"{info.name}  " + ", ".join(parts))


COMMANDS = (with_filters("pause", pause), with_filters("resume", resume), queue, schedule,
            limits_command)  # fmt: skip
