"""A wake-up reads a run's log, inbox and summary at once: every failure is kept."""

from __future__ import annotations

import pytest

from substantial._agent.wakeup import gather
from substantial.errors import BackendUnavailable, CorruptLog


async def _value(value: int) -> int:
    return value


async def _fail(error: Exception) -> None:
    raise error


async def test_results_come_back_in_order() -> None:
    assert await gather(_value(1), _value(2), _value(3)) == (1, 2, 3)


async def test_one_failure_is_raised_as_itself() -> None:
    with pytest.raises(CorruptLog):
        await gather(_value(1), _fail(CorruptLog("r", "runs/r/log/3", "not a segment")))


async def test_several_failures_surface_together() -> None:
    with pytest.raises(ExceptionGroup) as caught:
        await gather(
            _fail(CorruptLog("r", "runs/r/log/3", "not a segment")),
            _fail(BackendUnavailable("memory", "get", "down")),
        )
    kinds = sorted(type(error).__name__ for error in caught.value.exceptions)
    assert kinds == ["BackendUnavailable", "CorruptLog"]
