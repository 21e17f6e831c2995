"""
Sagas: ``save(..., compensate_with=)`` and ``revert()``. Compensations run newest first,
each once and durably, also when the revert spans wake-ups or an agent is killed in the
middle of it; a compensation that keeps failing ends the run with ``CompensationFailed``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from substantial import (
    Conductor,
    Context,
    Handle,
    RetryPolicy,
    RunFailed,
    RunReverted,
    RunStatus,
    StepFailed,
    workflow,
)
from substantial.backends import Backend, from_url
from tests import features_app, harness
from tests.agents import Agent, backend_url, check_log
from tests.conftest import BACKENDS
from tests.harness import WAIT, wait_until

PROCESS_BACKENDS = [p for p in BACKENDS if p.values[0] in ("files", "redis")]


class Ledger:
    """Balances per run, outside the log: what the steps (in worker threads) change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accounts: dict[str, dict[str, int]] = {}
        self.calls: dict[str, Counter[str]] = {}

    def open(self, run_id: str, **accounts: int) -> None:
        self.accounts[run_id] = dict(accounts)
        self.calls[run_id] = Counter()

    def move(
        self, run_id: str, label: str, src: str, dst: str, amount: int, fail_first: int = 0
    ) -> Callable[[], dict[str, int]]:
        def move_step() -> dict[str, int]:
            with self.lock:
                self.calls[run_id][label] += 1
                if self.calls[run_id][label] <= fail_first:
                    raise ConnectionError(f"{label}: bank unreachable")
                accounts = self.accounts[run_id]
                if dst not in accounts:
                    raise LookupError(f"account {dst!r} is closed")
                accounts[src] -= amount
                accounts[dst] += amount
                return dict(accounts)

        return move_step


ledger = Ledger()


@workflow(name="sagas.transfer")
async def transfer(c: Context, flaky_undo: int = 0, broken_undo: bool = False) -> str:
    """
    A -> B 30, an audit step without compensation, B -> C 20, C -> D 5 (D is closed).
    ``flaky_undo``: the first attempts of undo-ab fail, retried after a durable wait.
    ``broken_undo``: undo-bc fails on every attempt.
    """
    run = c.run_id
    retry = RetryPolicy(max_attempts=3, initial_interval=0.1)
    await c.save(
        ledger.move(run, "ab", "A", "B", 30),
        compensate_with=ledger.move(run, "undo-ab", "B", "A", 30, fail_first=flaky_undo),
        retry=retry,
    )
    await c.save(lambda: "audited")
    try:
        await c.save(
            ledger.move(run, "bc", "B", "C", 20),
            compensate_with=ledger.move(
                run, "undo-bc", "C", "B", 20, fail_first=99 if broken_undo else 0
            ),
            retry=retry,
        )
        await c.save(
            ledger.move(run, "cd", "C", "D", 5),
            compensate_with=ledger.move(run, "undo-cd", "D", "C", 5),
        )
    except StepFailed:
        await c.revert()
    return "transferred"


def make_conductor(backend: Backend) -> Conductor:
    """An agent for ``transfer`` on the virtual clock: retry waits take no real time."""
    return harness.make_conductor(backend, transfer, virtual_clock=True)


async def step_names(handle: Handle[Any]) -> list[str]:
    """Names of the steps recorded as completed (successfully or not), in log order."""
    return [
        event.details["name"].split(".")[-1]
        for event in await handle.history()
        if event.kind == "step_completed"
    ]


async def test_a_failed_transfer_reverts_each_completed_step_once_newest_first(
    backend: Backend,
) -> None:
    ledger.open("t-1", A=100, B=0, C=0)
    async with make_conductor(backend) as conductor:
        handle = await conductor.start(transfer, run_id="t-1")
        with pytest.raises(RunReverted) as caught:
            await handle.result(timeout=WAIT)
        assert caught.value.run_id == "t-1"
        assert await handle.status() is RunStatus.REVERTED
    assert ledger.accounts["t-1"] == {"A": 100, "B": 0, "C": 0}
    assert ledger.calls["t-1"] == Counter({"ab": 1, "bc": 1, "cd": 1, "undo-bc": 1, "undo-ab": 1})
    # the log: four steps (the last failed), then the two compensations, newest first
    history = await handle.history()
    completed = [e for e in history if e.kind == "step_completed"]
    assert [e.details["position"] for e in completed] == [0, 1, 2, 3, 4, 5]
    assert "failure" in completed[3].details
    assert "result" not in completed[3].details
    assert completed[4].details["result"] == {"A": 70, "B": 30, "C": 0}  # undo-bc
    assert completed[5].details["result"] == {"A": 100, "B": 0, "C": 0}  # undo-ab
    assert history[-1].kind == "reverted"
    await check_log(backend, "t-1")  # one final record per position


async def test_a_revert_spanning_wake_ups_resumes_where_it_stopped(backend: Backend) -> None:
    """undo-ab fails twice: the run is released for each durable retry wait and replayed,
    revert and all, and no compensation runs again."""
    ledger.open("t-2", A=100, B=0, C=0)
    async with make_conductor(backend) as conductor:
        handle = await conductor.start(transfer, flaky_undo=2, run_id="t-2")
        with pytest.raises(RunReverted):
            await handle.result(timeout=WAIT)
    assert ledger.accounts["t-2"] == {"A": 100, "B": 0, "C": 0}
    assert ledger.calls["t-2"]["undo-bc"] == 1
    assert ledger.calls["t-2"]["undo-ab"] == 3  # two failed attempts, then success
    history = await handle.history()
    kinds = [e.kind for e in history]
    assert kinds.count("step_attempt_failed") == 2
    assert kinds.count("step_completed") == 6
    assert len({e.segment for e in history}) >= 3  # the revert spanned several wake-ups
    await check_log(backend, "t-2")


async def test_a_compensation_that_keeps_failing_fails_the_run_naming_both_errors(
    backend: Backend,
) -> None:
    ledger.open("t-3", A=100, B=0, C=0)
    async with make_conductor(backend) as conductor:
        handle = await conductor.start(transfer, broken_undo=True, run_id="t-3")
        with pytest.raises(RunFailed) as caught:
            await handle.result(timeout=WAIT)
        assert await handle.status() is RunStatus.FAILED
    error = caught.value
    assert error.type_name == "substantial.errors.CompensationFailed"
    assert "compensation of step 'Ledger.move.<locals>.move_step'" in error.error_message
    assert "ConnectionError" in error.error_message  # the compensation's own error
    assert "StepFailed" in error.error_message
    assert "closed" in error.error_message
    # undo-bc used its three attempts; the older undo-ab never ran
    assert ledger.calls["t-3"]["undo-bc"] == 3
    assert ledger.calls["t-3"]["undo-ab"] == 0
    assert ledger.accounts["t-3"] == {"A": 70, "B": 10, "C": 20}


# ---- a real agent process killed in the middle of a revert ----


def features_agent(url: str, effects: Path, logs: Path) -> Agent:
    """An agent process running ``tests/features_app.py``."""
    return Agent(url, effects, logs, app=Path(features_app.__file__))


def balances(effects: Path, run_id: str) -> dict[str, int]:
    return json.loads((effects / f"{run_id}.balances").read_text())  # type: ignore[no-any-return]


def lines(effects: Path, run_id: str) -> list[str]:
    path = effects / run_id
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("kind", PROCESS_BACKENDS)
async def test_an_agent_killed_during_a_compensation_leaves_the_rest_to_another(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    run = "transfer-kill"
    (effects / f"{run}.balances").write_text(json.dumps({"A": 100, "B": 0, "C": 0}))
    backend = from_url(url)
    client = Conductor(backend)
    client.register(features_app.transfer)
    first = features_agent(url, effects, tmp_path)
    second = features_agent(url, effects, tmp_path)
    try:
        first.spawn()
        first.wait_ready()
        # undo-ab, the second compensation, waits at the barrier: undo-bc is done by then
        handle = await client.start(features_app.transfer, "undo-ab", run_id=run)

        async def in_undo_ab() -> bool:
            return "enter:undo-ab" in lines(effects, run)

        await wait_until(in_undo_ab, WAIT, "the first agent to enter undo-ab")
        first.kill()  # SIGKILL, in the middle of the compensation
        assert balances(effects, run) == {"A": 70, "B": 30, "C": 0}  # undo-bc applied
        (effects / f"{run}.open").touch()
        second.spawn()
        second.wait_ready()
        with pytest.raises(RunReverted):
            await handle.result(timeout=WAIT)
        assert await handle.status() is RunStatus.REVERTED
        assert balances(effects, run) == {"A": 100, "B": 0, "C": 0}
        assert lines(effects, run) == [
            "enter:ab", "done:ab", "enter:bc", "done:bc", "enter:cd",
            "enter:undo-bc", "done:undo-bc",
            "enter:undo-ab",  # killed here
            "enter:undo-ab", "done:undo-ab",  # the second agent
        ]  # fmt: skip
        checked = await check_log(backend, run)  # every position recorded once
        assert sorted(checked.steps) == [0, 1, 2, 3, 4]
        assert checked.stored.events[-1].WhichOneof("kind") == "reverted"
    finally:
        first.kill()
        second.kill()
        await backend.aclose()
