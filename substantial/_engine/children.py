"""``ChildHandle``: a child run as its parent workflow sees it."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

__all__ = ["ChildHandle"]

R = TypeVar("R")


class ChildHandle(Generic[R]):
    """
    A child run started with :meth:`Context.start_child`, seen from its parent workflow.

    :ivar run_id: the child's run id
    """

    def __init__(self, run_id: str, outcome: asyncio.Future[Any]) -> None:
        self.run_id = run_id
        self._outcome = outcome

    def __repr__(self) -> str:
        return f"<ChildHandle run_id={self.run_id!r}>"

    async def result(self) -> R:
        """
        Wait for the child to end, durably.

        :raises RunFailed: if the child failed
        :raises RunCancelled: if the child was cancelled
        """
        result: R = await self._outcome
        return result
