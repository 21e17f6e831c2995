"""
Cron expressions, evaluated by ``cronsim`` (docs/decisions.md says why that library):
the ticks of an expression in a time zone, as epoch milliseconds.

Daylight-saving transitions follow cronsim's documented rules, which are Debian cron's:
a tick in the hour skipped in spring runs once, at the first valid time after it; a
daily tick in the hour repeated in autumn runs once (at its first occurrence), while a
job that runs every hour runs in both occurrences of the repeated hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CATCHUPS", "check", "latest_tick", "ticks_after"]

#: What a schedule does about ticks missed while no agent ran.
CATCHUPS = ("none", "latest", "all")


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:  # pragma: no cover - the extra is in dev
        raise ImportError(
            "cron schedules need the cronsim package: pip install 'substantial[cron]'"
        ) from None
    return cronsim


def check(cron: str, timezone: str) -> None:
    """
    :raises ValueError: naming the problem, if the expression or the time zone is wrong
    """
    zone = _zone(timezone)
    cronsim = _cronsim()
    try:
        cronsim.CronSim(cron, datetime.now(zone))
    except cronsim.CronSimError as exc:
        raise ValueError(f"bad cron expression {cron!r}: {exc}") from None


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r} (use an IANA name)") from None


def ticks_after(cron: str, timezone: str, after_ms: int) -> Iterator[int]:
    """The expression's ticks strictly after ``after_ms``, in order, as epoch ms."""
    zone = _zone(timezone)
    start = datetime.fromtimestamp(after_ms / 1000, UTC).astimezone(zone)
    for tick in _cronsim().CronSim(cron, start):
        yield round(tick.timestamp() * 1000)


def latest_tick(cron: str, timezone: str, at_ms: int) -> int | None:
    """The expression's last tick at or before ``at_ms`` (None: none in the last 5 years)."""
    zone = _zone(timezone)
    start = datetime.fromtimestamp(at_ms // 1000 + 1, UTC).astimezone(zone)  # whole seconds
    tick = next(_cronsim().CronSim(cron, start, reverse=True), None)
    return None if tick is None else round(tick.timestamp() * 1000)
