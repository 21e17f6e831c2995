"""
The ``substantial`` command. It parses arguments, imports, and calls the public API;
the logic lives in the library.

    substantial worker myapp.flows:conductor
    substantial worker --app myapp.flows --backend redis://127.0.0.1:6379/0
    substantial check --backend file://./runs
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from typing import Any

import anyio
import click

from substantial.backends import Backend, from_url
from substantial.conductor import Conductor
from substantial.errors import BackendError
from substantial.workflow import Workflow

__all__ = ["main"]

log = logging.getLogger("substantial.cli")

backend_option = click.option(
    "--backend",
    "backend_url",
    envvar="SUBSTANTIAL_BACKEND",
    help="Storage URL: file://PATH, redis://HOST:PORT/DB, s3://BUCKET/PREFIX?endpoint_url=..., "
    "memory://. Default: $SUBSTANTIAL_BACKEND.",
)


@click.group()
@click.version_option(package_name="substantial")
def main() -> None:
    """Brokerless durable execution: run agents and inspect runs."""


def _import_object(path: str) -> Any:
    """Import ``module`` or ``module:attribute``."""
    module_name, _, attribute = path.partition(":")
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from None
    if not attribute:
        return module
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise click.UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None


def _workflows_in(module: Any) -> list[Workflow[Any]]:
    return [value for value in vars(module).values() if isinstance(value, Workflow)]


def _open_backend(url: str) -> Backend:
    try:
        return from_url(url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


async def _check_reachable(backend: Backend) -> None:
    check = getattr(backend, "check", None)
    if check is not None:
        await check()
    await backend.list("schedule/", limit=1)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("target", required=False)
@click.option("--app", help="Module whose @workflow functions the agent runs (with --backend).")
@backend_option
@click.option("--concurrency", type=click.IntRange(min=1), help="Runs worked on at once.")
@click.option("--lease", type=click.FloatRange(min=0.1), help="Lease length in seconds.")
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
    log_level: str,
) -> None:
    """
    Run an agent until SIGTERM or SIGINT.

    TARGET is `module:conductor`, a Conductor with its workflows registered. Or give
    --app MODULE and --backend URL: every @workflow in MODULE is registered.
    """
    _configure_logging(log_level)
    if target is not None:
        conductor = _import_object(target)
        if not isinstance(conductor, Conductor):
            raise click.UsageError(f"{target!r} is a {type(conductor).__name__}, not a Conductor")
        if backend_url:
            conductor = _rebuilt(conductor, _open_backend(backend_url))
    elif app and backend_url:
        module = _import_object(app)
        conductor = Conductor(_open_backend(backend_url))
        workflows = _workflows_in(module)
        if not workflows:
            raise click.UsageError(f"module {app!r} defines no @workflow functions")
        conductor.register(*workflows)
    else:
        raise click.UsageError("give TARGET (module:conductor), or both --app and --backend")
    if concurrency is not None:
        conductor.concurrency = concurrency
    if lease is not None:
        conductor.lease_seconds = lease
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
    )
    fresh.register(*conductor.workflows)
    return fresh


async def _serve_until_signal(conductor: Conductor) -> None:
    await _check_reachable(conductor.backend)
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await tg.start(conductor.serve)
            log.info(
                "worker %s: %d workflows, concurrency %d, lease %gs",
                conductor.name,
                len(conductor.workflows),
                conductor.concurrency,
                conductor.lease_seconds,
            )
            async for signum in signals:
                log.info("worker %s: %s, stopping", conductor.name, signal.Signals(signum).name)
                tg.cancel_scope.cancel()
                break
    await conductor.aclose()


@main.command()
@backend_option
def check(backend_url: str | None) -> None:
    """Exit 0 if the backend answers, 1 if not."""
    if not backend_url:
        raise click.UsageError("give --backend URL or set SUBSTANTIAL_BACKEND")
    backend = _open_backend(backend_url)

    async def probe() -> None:
        try:
            await _check_reachable(backend)
        finally:
            await backend.aclose()

    try:
        anyio.run(probe)
    except (BackendError, OSError) as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    click.echo(f"healthy: {backend_url}")
