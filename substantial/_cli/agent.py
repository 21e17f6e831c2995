"""The commands that run an agent (``worker``) and probe a backend's health (``check``)."""

from __future__ import annotations

import logging
import signal
import sys
import uuid

import anyio
import click

from substantial._cli.common import (
    backend_option,
    configure_logging,
    import_object,
    open_backend,
    workflows_in,
)
from substantial._cli.keys import cli_codecs
from substantial._conductor import Conductor
from substantial._core import constants
from substantial._store.keys import BUCKETS, SCHEDULE_PREFIX
from substantial.backends import Backend
from substantial.errors import BackendError

__all__ = ["check", "worker"]

log = logging.getLogger("substantial.cli")


@click.command()
@click.argument("target", required=False)
@click.option("--app", help="Module whose @workflow functions the agent runs (with --backend).")
@backend_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Runs worked on at once.",
    show_default=f"{constants.CONCURRENCY}, or TARGET's own",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0.1),
    help="Lease length in seconds.",
    show_default=f"{constants.LEASE_SECONDS:g}, or TARGET's own",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="A queue to serve (repeat for several). Default: the queues of its workflows.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def worker(
    target: str | None,
    app: str | None,
    backend_url: str | None,
    concurrency: int | None,
    lease: float | None,
    queues: tuple[str, ...],
    log_level: str,
) -> None:
    """
    Run an agent until SIGTERM or SIGINT.

    TARGET is `module:conductor`, a Conductor with its workflows registered. Or give
    --app MODULE and --backend URL: every @workflow in MODULE is registered.
    """
    configure_logging(log_level)
    if target is not None:
        conductor = import_object(target)
        if not isinstance(conductor, Conductor):
            raise click.UsageError(f"{target!r} is a {type(conductor).__name__}, not a Conductor")
        if backend_url:
            conductor = _rebuilt(conductor, open_backend(backend_url))
    elif app and backend_url:
        module = import_object(app)
        conductor = Conductor(open_backend(backend_url), codecs=cli_codecs())
        workflows = workflows_in(module)
        if not workflows:
            raise click.UsageError(f"module {app!r} defines no @workflow functions")
        conductor.register(*workflows)
    else:
        raise click.UsageError("give TARGET (module:conductor), or both --app and --backend")
    if concurrency is not None:
        conductor.concurrency = concurrency
    if lease is not None:
        conductor.lease_seconds = lease
    if queues:
        conductor.queues = list(queues)
    try:
        anyio.run(_serve_until_signal, conductor)
    except BackendError as exc:
        click.echo(f"error: backend unreachable: {exc}", err=True)
        sys.exit(1)


def _rebuilt(conductor: Conductor, backend: Backend) -> Conductor:
    """The same conductor settings and workflows on another backend."""
    fresh = Conductor(
        backend,
        concurrency=conductor.concurrency,
        lease=conductor.lease_seconds,
        park_retry=conductor.park_retry,
        shutdown_grace=conductor.shutdown_grace,
        max_payload=conductor.max_payload,
        blob_threshold=conductor.blob_threshold,
        codecs=conductor.store.payloads.codecs,
        queues=conductor.queues_given,
    )
    fresh.register(*conductor.workflows)
    return fresh


async def _serve_until_signal(conductor: Conductor) -> None:
    await check_reachable(conductor.backend)
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await tg.start(conductor.serve)
            log.info(
                "worker %s: %d workflows, concurrency %d, lease %gs, queues %s",
                conductor.name,
                len(conductor.workflows),
                conductor.concurrency,
                conductor.lease_seconds,
                ", ".join(conductor.queues),
            )
            async for signum in signals:
                log.info("worker %s: %s, stopping", conductor.name, signal.Signals(signum).name)
                tg.cancel_scope.cancel()
                break
    await conductor.aclose()


@click.command()
@backend_option
def check(backend_url: str | None) -> None:
    """
    Exit 0 if the backend answers and takes writes, 1 if not (unreachable, or refusing
    writes: full, out of memory, read-only, a permission).
    """
    if not backend_url:
        raise click.UsageError("give --backend URL or set SUBSTANTIAL_BACKEND")
    backend = open_backend(backend_url)

    async def probe() -> None:
        try:
            await check_reachable(backend)
            await check_writable(backend)
        finally:
            await backend.aclose()

    try:
        anyio.run(probe)
    except (BackendError, OSError) as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    click.echo(f"healthy: {backend_url}")


async def check_reachable(backend: Backend) -> None:
    check = getattr(backend, "check", None)
    if check is not None:
        await check()
    await backend.list_before(SCHEDULE_PREFIX, SCHEDULE_PREFIX + BUCKETS, limit=1)


async def check_writable(backend: Backend) -> None:
    """Write and delete a probe key: a store that answers reads may still refuse writes."""
    key = f"health/probe-{uuid.uuid4().hex}"
    await backend.create(key, b"substantial check")
    await backend.delete(key)
