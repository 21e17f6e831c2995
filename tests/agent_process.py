"""
The main program of the agent apps the multi-process tests start (``chaos_app.py``,
``features_app.py``, ``runids_app.py``): serve until SIGTERM or SIGINT, print ``ready``
once serving, close the backend on the way out.

Each app ends with::

    if __name__ == "__main__":
        from agent_process import run_agent  # a sibling: the app runs as a script

        run_agent(build)
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

import anyio

from substantial import Conductor


async def serve(build: Callable[[str], Conductor], url: str) -> None:
    """Run the agent of ``build(url)`` until SIGTERM or SIGINT; print ``ready`` once it serves."""
    conductor = build(url)
    try:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await tg.start(conductor.serve)
            print("ready", flush=True)
    finally:
        with anyio.CancelScope(shield=True):
            await conductor.aclose()


def run_agent(build: Callable[[str], Conductor]) -> None:
    """The app's command line: ``python APP.py BACKEND_URL``."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    anyio.run(serve, build, sys.argv[1])
