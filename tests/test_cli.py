"""The `substantial` console script, run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from substantial import Conductor
from substantial.backends import FSBackend
from tests.cli_app import double

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(sys.executable).with_name("substantial"))


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=60, env=_env(**env), cwd=ROOT
    )


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [SCRIPT, "worker", "tests.cli_app:conductor", "--concurrency", "4"],
        env=_env(CLI_APP_FOLDER=str(tmp_path)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


async def test_worker_runs_workflows_and_stops_on_sigterm(
    tmp_path: Path, worker_process: subprocess.Popen[str]
) -> None:
    client = Conductor(FSBackend(tmp_path))  # no agent in this process
    client.register(double)
    handle = await client.start(double, 21)
    await handle.send("factor", 3)
    assert await handle.result(timeout=30) == 126

    worker_process.send_signal(signal.SIGTERM)
    _, stderr = worker_process.communicate(timeout=30)
    assert worker_process.returncode == 0, stderr
    assert "SIGTERM, stopping" in stderr
    assert f"run {handle.run_id} completed" in stderr


async def test_worker_stops_on_sigint(
    tmp_path: Path, worker_process: subprocess.Popen[str]
) -> None:
    client = Conductor(FSBackend(tmp_path))
    client.register(double)
    handle = await client.start(double, 1)
    await handle.send("factor", 1)
    assert await handle.result(timeout=30) == 2
    worker_process.send_signal(signal.SIGINT)
    _, stderr = worker_process.communicate(timeout=30)
    assert worker_process.returncode == 0, stderr


async def test_worker_with_app_and_backend_url(tmp_path: Path) -> None:
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [SCRIPT, "worker", "--app", "tests.cli_app", "--backend", f"file://{tmp_path}"],
        env=_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = Conductor(FSBackend(tmp_path))
        client.register(double)
        handle = await client.start(double, 5)
        await handle.send("factor", 2)
        assert await handle.result(timeout=30) == 20
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_worker_bad_module_path_is_a_clear_error() -> None:
    result = _cli("worker", "no_such_module:conductor")
    assert result.returncode == 2
    assert "cannot import 'no_such_module'" in result.stderr


def test_worker_target_must_be_a_conductor() -> None:
    result = _cli("worker", "tests.cli_app:double")
    assert result.returncode == 2
    assert "is a Workflow, not a Conductor" in result.stderr


def test_worker_unreachable_backend_exits_1() -> None:
    result = _cli("worker", "--app", "tests.cli_app", "--backend", "redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "backend unreachable" in result.stderr


def test_check_reports_health(tmp_path: Path) -> None:
    healthy = _cli("check", "--backend", f"file://{tmp_path}")
    assert healthy.returncode == 0, healthy.stderr
    assert "healthy" in healthy.stdout
    unhealthy = _cli("check", "--backend", "redis://127.0.0.1:1/0")
    assert unhealthy.returncode == 1
    assert "unhealthy" in unhealthy.stderr


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "substantial", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "worker" in result.stdout
