"""``substantial ui``: the web view of runs (the ``[ui]`` extra)."""

from __future__ import annotations

import click

from substantial._cli.common import backend_option, fail, open_backend

__all__ = ["ui"]

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@click.command()
@backend_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8233, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="Show runs only: no send, cancel or terminate.")
@click.option(
    "--token",
    envvar="SUBSTANTIAL_UI_TOKEN",
    help="Ask every request for this token (required with a --host other than loopback). "
    "Default: $SUBSTANTIAL_UI_TOKEN.",
)
@click.option(
    "--refresh",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between a page's refreshes (0: never).",
)
def ui(
    backend_url: str | None,
    host: str,
    port: int,
    read_only: bool,
    token: str | None,
    refresh: float,
) -> None:
    """
    Serve a web view of the runs on a backend: a list with filters, each run's timeline
    and events, and (unless --read-only) buttons to send events, cancel and terminate.
    It reads the store the agents use; no agent is needed.
    """
    if not backend_url:
        raise click.UsageError("give --backend URL or set SUBSTANTIAL_BACKEND")
    if not (host in LOOPBACK or host.startswith("127.")) and not token:
        raise click.UsageError(
            f"--host {host} serves the view beyond this machine: give --token (or set "
            "SUBSTANTIAL_UI_TOKEN) so that only people with it can see and change runs"
        )
    try:
        import uvicorn

        from substantial._ui import UiSettings, create_app
    except ImportError as exc:
        fail(f"substantial ui needs the [ui] extra (pip install 'substantial[ui]'): {exc}")
    loopback = host in LOOPBACK or host.startswith("127.")
    # On loopback without a token, answer only to loopback names: a page of another site
    # that rebinds its name to 127.0.0.1 is then refused (with a token it lacks the cookie).
    hosts = (*LOOPBACK, host) if loopback and not token else ()
    settings = UiSettings(
        backend_url, read_only=read_only, token=token or None, refresh=refresh, hosts=hosts
    )
    app = create_app(settings, open_backend(backend_url), close_backend=True)
    shown = f"[{host}]" if ":" in host else host
    where = f"http://{shown}:{port}/"
    note = " (open it once as /?token=TOKEN)" if token else ""
    click.echo(f"substantial ui on {where}{note}: reading every run's summary, then listening")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
