"""
Cron parsers compared for Conductor.schedule() (docs/decisions.md): next-tick rate,
parse + first tick, and the ticks of a daily 02:30 job across Zurich's 2026 clock changes.

    pip install croniter   # not a dependency: only to compare
    .venv/bin/python bench/cron_parsers.py
"""

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from cronsim import CronSim

ZURICH = ZoneInfo("Europe/Zurich")
START = datetime(2026, 1, 1, tzinfo=ZURICH)
N = 20_000


def rate(count: int, body: object) -> float:
    began = time.perf_counter()
    for _ in range(count):
        body()  # type: ignore[operator]
    return count / (time.perf_counter() - began)


hourly = CronSim("0 * * * *", START)
hourly_croniter = croniter("0 * * * *", START)
print(f"hourly next tick: cronsim {rate(N, lambda: next(hourly)):,.0f}/s, "
      f"croniter {rate(N, lambda: hourly_croniter.get_next(datetime)):,.0f}/s")  # fmt: skip
parsed = rate(2000, lambda: next(CronSim("0 3 * * *", START)))
parsed_croniter = rate(2000, lambda: croniter("0 3 * * *", START).get_next(datetime))
print(f"parse + first tick: cronsim {parsed:,.0f}/s, croniter {parsed_croniter:,.0f}/s")
for day in (datetime(2026, 3, 28, 23, tzinfo=ZURICH), datetime(2026, 10, 24, 23, tzinfo=ZURICH)):
    ours, theirs = CronSim("30 2 * * *", day), croniter("30 2 * * *", day)
    print(day.date(), "cronsim ", [next(ours).isoformat() for _ in range(3)])
    print(day.date(), "croniter", [theirs.get_next(datetime).isoformat() for _ in range(3)])
