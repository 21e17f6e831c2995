"""``python -m bench [--quick] [--backends memory,files,redis,s3] [--json FILE]``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import anyio

from bench import fast, measure, report
from bench.scale import SCALES, Scale
from bench.targets import KINDS, Target, default_workdir, prepare


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--backends", default=",".join(KINDS), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="a ~30 s subset")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--markdown", type=Path, help="write the report here too")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--dir", type=Path, help="folder for the files backend (default: temp)")
    return parser.parse_args(argv)


ROWS = ("floor", "step", "latency", "throughput", "resume", "scale-out", "idle", "poll", "proxy")


async def _run_target(
    target: Target, scale: Scale, only: set[str], results: list[measure.Result]
) -> None:
    bench = measure.Bench(target, scale, log=_say)
    kind = target.kind
    plan: list[tuple[str, str, object]] = [
        ("floor", "floor", lambda: measure.floor(bench)),
        ("step", "step", lambda: measure.step(bench)),
        ("latency", "latency", lambda: measure.latency(bench)),
    ]
    for runs, repeats in scale.throughput[kind]:
        make = lambda r=runs, n=repeats: measure.throughput(bench, r, n)  # noqa: E731
        plan.append(("throughput", f"throughput {runs}", make))
    plan.append(("resume", "resume", lambda: measure.resume(bench)))
    if kind != "memory":
        plan.append(("scale-out", "scale-out", lambda: measure.scale_out(bench)))
    plan.append(("idle", "idle", lambda: measure.idle(bench)))
    plan.append(("poll", "poll", lambda: fast.poll(bench)))
    if kind == "s3":
        plan.append(("proxy", "proxy", lambda: fast.proxy(bench)))
    for name, label, make in plan:
        if only and name not in only:
            continue
        started = time.perf_counter()
        try:
            produced = await make()  # type: ignore[operator]
        except Exception as exc:  # a row that breaks is reported, and the others still run
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) >= 1:
                exc = exc.exceptions[0]
            error = f"{type(exc).__name__}: {exc}"
            produced = measure.Result(label, kind, {"error": error}, "FAILED (see notes)", error)
        batch = produced if isinstance(produced, list) else [produced]
        results.extend(batch)
        for result in batch:
            _say(f"  {kind:6} {result.row:24} {result.cell}")
        _say(f"  {kind:6} ({name}: {time.perf_counter() - started:.1f} s)")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    kinds = [kind.strip() for kind in args.backends.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        print(f"unknown backends {unknown}; choose from {', '.join(KINDS)}", file=sys.stderr)
        return 2
    scale = SCALES["tiny" if args.tiny else "quick" if args.quick else "full"]
    only = {row.strip() for row in args.only.split(",") if row.strip()}
    workdir = args.dir.resolve() if args.dir else default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    targets, skipped = prepare(kinds, workdir)
    for kind, reason in skipped.items():
        _say(f"skipping {kind}: {reason}")
    versions: dict[str, str] = {}
    for target in targets:
        versions.update(target.versions)
    results: list[measure.Result] = []
    load = os.getloadavg()
    try:
        for target in targets:
            _say(f"{target.kind} ({scale.name})")
            anyio.run(_run_target, target, scale, only, results)
        env = report.environment(workdir, versions)
        env["load average before"] = " ".join(f"{x:.2f}" for x in load)
        env["load average after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        for target in targets:
            target.close()
    seconds = time.perf_counter() - started  # before the clean-up below
    present = [target.kind for target in targets]
    text = report.render(results, present, env, skipped, command.strip(), seconds)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        payload = {
            "command": command.strip(),
            "scale": scale.name,
            "seconds": seconds,
            "environment": env,
            "skipped": skipped,
            "results": [asdict(result) for result in results],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if not args.dir:  # after the report: deleting many files can take a while
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
