"""An agent's settings, shared by reference between the parts that read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast, overload

__all__ = ["AgentSettings", "Setting"]

T = TypeVar("T")


@dataclass
class AgentSettings:
    """
    How one agent works. Mutable: the CLI sets ``concurrency`` and ``lease_seconds`` on a
    :class:`~substantial.Conductor` after building it, and every part sees the change.
    """

    #: this agent's name in leases and logs
    name: str
    #: how many runs the agent works on at once
    concurrency: int
    #: how long a claim on a run lasts unless renewed
    lease_seconds: float
    #: how long a run that no longer replays waits before a retry
    park_retry: float
    #: how long stopping the agent waits for in-flight steps
    shutdown_grace: float
    #: the longest wait between two polls of the schedule (and two inbox reads of a run)
    poll_max: float
    #: compact a run's log into a snapshot every this many segments (0: never)
    snapshot_every: int


class Setting(Generic[T]):
    """An attribute of its owner that lives in the owner's ``_settings`` (AgentSettings)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, owner: None, owner_type: type) -> Setting[T]: ...
    @overload
    def __get__(self, owner: object, owner_type: type | None = None) -> T: ...
    def __get__(self, owner: Any, owner_type: type | None = None) -> T | Setting[T]:
        if owner is None:  # looked up on the class (help(), documentation tools)
            return self
        return cast(T, getattr(owner._settings, self.name))

    def __set__(self, owner: Any, value: T) -> None:
        setattr(owner._settings, self.name, value)
