"""The long-lived parts of one agent, which its poller and every wake-up share."""

from __future__ import annotations

from dataclasses import dataclass

from substantial._agent.endings import Endings
from substantial._agent.health import StoreTrouble
from substantial._agent.holdoffs import HoldOffs
from substantial._agent.limiter import Limiter
from substantial._agent.settings import AgentSettings
from substantial._agent.steps import StepRunner
from substantial._client.client import Client
from substantial._store.runs import RunStore

__all__ = ["AgentParts"]


@dataclass(frozen=True)
class AgentParts:
    """What an agent's poller, run processor and wake-ups work with."""

    settings: AgentSettings
    #: starts continuations and children, knows the workflows, wakes local waiters
    client: Client
    #: runs this agent leaves alone for a while
    holdoffs: HoldOffs
    #: the agent's view of its storage as a whole
    trouble: StoreTrouble
    steps: StepRunner
    endings: Endings
    #: named step limits (Conductor.set_limit)
    limits: Limiter

    @property
    def store(self) -> RunStore:
        return self.client.store
