"""The commands that look after the store as a whole: ``replay`` (the deploy gate),
``versions``, ``quarantine`` and ``gc``. Presentation only; the logic is in
:mod:`substantial.ops` and :mod:`substantial._store.quarantine`."""

from __future__ import annotations

import inspect as pyinspect
import sys
from datetime import timedelta

import click

from substantial import ops as inspect
from substantial._cli.common import (
    Duration,
    backend_option,
    fail,
    import_object,
    run_id_argument,
    with_backend,
    workflows_in,
)
from substantial._cli.formatting import Progress, count, time_text
from substantial._store import quarantine

__all__ = ["gc_command", "quarantine_command", "replay", "versions"]


@click.command()
@click.argument("run_ids", metavar="[RUN]...", nargs=-1, callback=run_id_argument)
@click.option(
    "--app",
    required=True,
    help="Module (or module:conductor, or a .py path) whose @workflow functions are the new code.",
)
@backend_option
@click.option("--all", "include_finished", is_flag=True, help="Finished runs too.")
def replay(
    run_ids: tuple[str, ...], app: str, backend_url: str | None, include_finished: bool
) -> None:
    """
    Replay stored logs against the current code; exit 1 if any would not replay.

    A deploy gate: checks every unfinished run (or the RUNs given) and writes nothing.
    """
    workflows = workflows_in(import_object(app))
    if not workflows:
        raise click.UsageError(f"module {app!r} defines no @workflow functions")
    progress = Progress("runs replayed")
    checks = with_backend(
        backend_url,
        lambda backend: inspect.check_replay(
            workflows,
            backend,
            list(run_ids) or None,
            include_finished=include_finished,
            progress=progress,
        ),
    )
    progress.finish()
    problems = [check for check in checks if not check.ok]
    for check in problems:
        if check.outcome == "nondeterminism":
            where = "the end" if check.position is None else f"position {check.position}"
            click.echo(
                f"{check.run_id} ({check.workflow}): nondeterminism at {where}: "
                f"log has {check.logged}; code has {check.code}"
            )
        else:
            click.echo(f"{check.run_id} ({check.workflow or '?'}): {check.outcome}: {check.detail}")
    click.echo(f"replayed {count(len(checks), 'run')}: {len(problems)} would not replay")
    if problems:
        sys.exit(1)


@click.command()
@click.argument("change_id")
@click.option(
    "--app",
    required=True,
    help="Module (or module:conductor, or a .py path) with the current @workflow functions.",
)
@backend_option
def versions(change_id: str, app: str, backend_url: str | None) -> None:
    """
    List unfinished runs still on the old side of c.version(CHANGE_ID).

    When none are left, the old branch and the version() call can be deleted.
    """
    module = import_object(app)
    workflows = workflows_in(module)
    if not workflows:
        raise click.UsageError(f"module {app!r} defines no @workflow functions")
    try:
        source = pyinspect.getsource(module)
    except (OSError, TypeError):  # no source to read (a zip, a frozen module): no check
        source = change_id
    if change_id not in source:
        fail(
            f"module {app!r} never mentions {change_id!r}: no c.version({change_id!r}) call "
            "to check; is the change id spelled as in the code?"
        )
    progress = Progress("runs replayed")
    old = with_backend(
        backend_url,
        lambda backend: inspect.runs_on_old_branch(
            workflows, backend, change_id, progress=progress
        ),
    )
    progress.finish()
    for run_id in old:
        click.echo(run_id)
    click.echo(f"{count(len(old), 'run')} on the old side of {change_id!r}", err=True)


@click.command("quarantine")
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
@click.option("--drop", "keys", multiple=True, metavar="KEY", help="Delete this entry.")
@click.option("--all", "drop_all", is_flag=True, help="Delete every entry.")
def quarantine_command(
    backend_url: str | None, run_id: str, keys: tuple[str, ...], drop_all: bool
) -> None:
    """List a run's inbox entries set aside as unmergeable, or delete them."""
    if not keys and not drop_all:
        for entry in with_backend(backend_url, lambda b: quarantine.list_quarantined(b, run_id)):
            click.echo(f"{entry.key}  {time_text(entry.at)}  {entry.reason}")
        return
    wanted = None if drop_all else keys
    dropped = with_backend(backend_url, lambda b: quarantine.drop(b, run_id, wanted))
    for key in dropped:
        click.echo(f"dropped {key}")
    missing = [key for key in keys if quarantine.full_key(run_id, key) not in dropped]
    if missing:
        fail(f"not in the quarantine of run {run_id!r}: {', '.join(missing)}")


@click.command("gc")
@backend_option
@click.option("--older-than", required=True, type=Duration(), help="e.g. 30d, 12h.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
def gc_command(backend_url: str | None, older_than: timedelta, dry_run: bool) -> None:
    """Delete finished runs last updated longer ago than --older-than, with all their keys."""
    progress = Progress("runs deleted" if not dry_run else "runs examined")
    outcome = with_backend(
        backend_url,
        lambda backend: inspect.gc(backend, older_than, dry_run=dry_run, progress=progress),
    )
    progress.finish()
    verb = "would delete" if dry_run else "deleted"
    for run_id in outcome.runs:
        click.echo(f"{verb} {run_id}")
    for run_id in outcome.busy:
        click.echo(f"skipped {run_id}: an agent holds its lease")
    for run_id in outcome.live:
        click.echo(f"skipped {run_id}: its summary says finished, its log does not")
    click.echo(f"{verb} {count(len(outcome.runs), 'run')} ({count(outcome.keys, 'key')})")
    if outcome.blobs:
        click.echo(f"{verb} {count(len(outcome.blobs), 'blob')} no run refers to")
