"""Flow control from the terminal: pause and resume runs and queues."""

from __future__ import annotations

import click

from substantial._cli.common import backend_option, run_id_argument, with_backend
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


COMMANDS = (pause, resume, queue)
