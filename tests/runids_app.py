"""
An agent process for the run-id tests (``tests/test_run_ids.py``): a workflow that
builds a child's run id from its input, as an order service might.

    python tests/runids_app.py BACKEND_URL

Prints ``ready`` on stdout once it serves; SIGTERM/SIGINT stop it (exit 0).
"""

from __future__ import annotations

from substantial import Conductor, Context, InvalidRunId, workflow


@workflow(name="runids.line")
async def line(c: Context, qty: int) -> int:
    return await c.save(lambda: qty * 3)


@workflow(name="runids.order")
async def order(c: Context, ref: str) -> str:
    """Runs a child named after the order reference, which may be anything a user typed."""
    try:
        return f"ok {await c.child(line, 2, run_id=f'order-{ref}')}"
    except InvalidRunId as exc:
        return f"refused {exc.run_id}"


def build(url: str) -> Conductor:
    conductor = Conductor(url, lease=1.0, poll_interval=0.05)
    conductor.register(line, order)
    return conductor


if __name__ == "__main__":
    from agent_process import run_agent  # a sibling: this file runs as a script

    run_agent(build)
