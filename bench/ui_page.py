"""
How fast the web view opens on a big store: ``python -m bench.ui_page [--runs N] [DIR]``.

Writes N runs on a files backend in DIR (once; kept for the next time: started with
``Conductor.start``, a third of them finished by an agent), starts ``substantial ui`` on
it as a subprocess, and opens pages in Debian's Chromium (Playwright) several times:
the runs page, a filtered one, a late page, and one run. Prints what each took in the
browser (request sent to ``load`` fired) and how long the server took to start (it reads
every summary once before it listens). Needs the ``[ui]`` extra, playwright and
/usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio

from substantial import Conductor, Context, workflow


@workflow(name="bench.ui.touch")
async def touch(c: Context, n: int) -> int:
    return await c.save(lambda: n + 1)


async def _write_runs(folder: Path, runs: int) -> None:
    conductor = Conductor(f"file://{folder}", poll_interval=0.05)
    conductor.register(touch)
    limit = anyio.Semaphore(32)

    async def one(n: int) -> None:
        async with limit:
            name = touch if n % 3 == 0 else ("bench.ui.orders", "bench.ui.emails")[n % 2]
            await conductor.start(name, n, run_id=f"run-{n:06d}")

    async with anyio.create_task_group() as tg:
        for n in range(runs):
            tg.start_soon(one, n)
    async with conductor:  # an agent: finishes the runs it knows (a third of them)
        await conductor.handle(f"run-{(runs - 1) // 3 * 3:06d}").result(timeout=600)
    await conductor.aclose()


def _serve(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], float]:
    began = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "substantial", "ui", "--backend", f"file://{folder}",
         "--port", str(port), "--refresh", "0"],
    )  # fmt: skip
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/ui.css", timeout=5):
                return server, time.perf_counter() - began
        except OSError:
            if server.poll() is not None:
                raise SystemExit("substantial ui did not start") from None
            time.sleep(0.05)


def _open(page: object, url: str, times: int) -> dict[str, float]:
    took = []
    for _ in range(times):
        page.goto(url)  # type: ignore[attr-defined]
        timing = page.evaluate(  # type: ignore[attr-defined]
            "() => { const t = performance.getEntriesByType('navigation')[0];"
            " return [t.requestStart, t.responseEnd, t.loadEventEnd]; }"
        )
        took.append((timing[2] - timing[0]) / 1000)
    return {"median_s": round(statistics.median(took), 4), "max_s": round(max(took), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("folder", nargs="?", default="/tmp/substantial-ui-bench")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=8299)
    parser.add_argument("--times", type=int, default=7)
    options = parser.parse_args()
    folder = Path(options.folder)
    if not (folder / "runs").is_dir():
        began = time.perf_counter()
        anyio.run(_write_runs, folder, options.runs)
        print(f"wrote {options.runs} runs in {time.perf_counter() - began:.1f}s", file=sys.stderr)
    from playwright.sync_api import sync_playwright

    server, startup = _serve(folder, options.port)
    base = f"http://127.0.0.1:{options.port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page()
            results = {
                "runs": len(os.listdir(folder / "runs")),
                "server_start_s": round(startup, 3),
                "runs_page": _open(page, f"{base}/", options.times),
                "filtered": _open(
                    page,
                    f"{base}/?status=pending&workflow=bench.ui.orders&prefix=run-00",
                    options.times,
                ),
                "page_100": _open(page, f"{base}/?page=100", options.times),
                "one_run": _open(page, f"{base}/runs/run-000003", options.times),
            }
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
