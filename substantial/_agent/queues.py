"""
The queues an agent serves (its own list, or those of the workflows it registered), and
which schedule entries in them are for it.
"""

from __future__ import annotations

from substantial._client.client import Client
from substantial._store.keys import DEFAULT_QUEUE, Route, check_name, workflow_mark

__all__ = ["ServedQueues"]


class ServedQueues:
    """
    :param client: knows the registered workflows
    :param queues: the queues to serve (None: those of the registered workflows, or
        ``default`` while none is registered)
    """

    def __init__(self, client: Client, queues: list[str] | None) -> None:
        self._client = client
        self._explicit = None if queues is None else [check_name(q, "queue") for q in queues]
        self._marks: set[str] = set()
        self._marked: int = -1

    @property
    def explicit(self) -> list[str] | None:
        """The queues given to serve, or None: those of the registered workflows."""
        return None if self._explicit is None else list(self._explicit)

    @property
    def names(self) -> list[str]:
        """The queues this agent serves."""
        if self._explicit is not None:
            return list(self._explicit)
        own = {wf.queue for wf in self._client.registry.values()}
        return sorted(own or {DEFAULT_QUEUE})

    def knows(self, route: Route) -> bool:
        """Whether an entry with this route is for this agent (any agent's, or its workflow's)."""
        registry = self._client.registry
        if len(registry) != self._marked:  # registered since (names never change)
            self._marks = {workflow_mark(name) for name in registry}
            self._marked = len(registry)
        return not route.mark or route.mark in self._marks
