"""
The workflows of ``examples/deployment.py``. Workers load them with
``substantial worker --app deployment_app --backend URL`` (this folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from substantial import Context, workflow


def _where() -> str:
    """Which worker process ran a step: steps run wherever the run's lease is."""
    return f"pid {os.getpid()}"


@workflow(name="deployment.order")
async def order(c: Context, order_id: str, amount: int) -> dict[str, Any]:
    charged = await c.save(lambda: {"charged": amount * 100, "by": _where()})
    await c.sleep(timedelta(seconds=0.5))  # the run is released; any worker may resume it
    shipped = await c.save(lambda: {"shipped": order_id, "by": _where()})
    return {"order": order_id, "cents": charged["charged"], "steps": [charged, shipped]}
