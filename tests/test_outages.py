"""
Storage outages with 50 runs in flight on two in-process agents: a frozen redis-server,
every Redis connection killed, an S3 endpoint refusing connections, an S3 endpoint
answering ``503 SlowDown``. In each case the agents back off and keep going, log the
outage once (plus one "reachable again" line) instead of once per request, never die,
and every run completes with the right result.

These tests use their own redis-server and moto server, so freezing them cannot disturb
the session servers other tests share.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import http.client
import http.server
import logging
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from substantial import Conductor, Context, workflow
from substantial.backends import Backend
from tests.harness import wait_until
from tests.servers import RedisServer, S3Server, free_port, running_moto, running_redis

pytestmark = [pytest.mark.usefixtures("anyio_backend"), pytest.mark.timeout(300)]

RUNS = 50
STEPS = 3
#: Step executions seen so far, by run id (a step may run twice: at-least-once).
DONE: set[tuple[str, int]] = set()
#: Bound on every wait in these tests.
DEADLINE = 120.0


async def _step(run_id: str, index: int, n: int) -> int:
    DONE.add((run_id, index))
    return n * 10 + index


@workflow(name="tests.outage_flow")
async def outage_flow(c: Context, n: int) -> int:
    total = 0
    for index in range(STEPS):
        total += await c.save(functools.partial(_step, c.run_id, index, n))
        if index == 0:
            await c.sleep(0.3)
    return total


def _expected(n: int) -> int:
    return sum(n * 10 + index for index in range(STEPS))


# ---- servers of our own ----


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("outage-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def own_moto() -> Iterator[S3Server]:
    with running_moto() as server:
        yield server


_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>outage-proxy</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
_HOP_BY_HOP |= {"expect"}


class FaultProxy:
    """
    An HTTP forwarder on 127.0.0.1 in front of moto, one connection per request.
    :meth:`refuse` closes its listening socket (connections refused, moto keeps its
    data), :meth:`accept` listens again on the same port; while ``failing`` is set it
    answers every request ``503 SlowDown`` with S3's XML error body.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.failing = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accept(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # HTTP/1.1 so that botocore's "Expect: 100-continue" gets its "100 Continue";
            # every response says "Connection: close", so still one request a connection.
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                assert "chunked" not in self.headers.get("Transfer-Encoding", "")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.failing.is_set():
                    self.send_response_only(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    headers = {
                        name: value
                        for name, value in self.headers.items()
                        if name.lower() not in _HOP_BY_HOP
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    lower = name.lower()
                    if lower in _HOP_BY_HOP or (
                        lower == "content-length" and self.command != "HEAD"
                    ):
                        continue
                    self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def refuse(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def refuses(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return False
        except ConnectionRefusedError:
            return True


@pytest.fixture
def proxy(own_moto: S3Server) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(own_moto.port)
    fault_proxy.accept()
    try:
        yield fault_proxy
    finally:
        fault_proxy.failing.clear()
        fault_proxy.refuse()


@pytest.fixture
async def orphaned_write_errors_ignored() -> AsyncIterator[None]:
    """
    When the endpoint drops a connection mid-request, aiohttp's own request-body writer
    task fails with a connection error that nobody retrieves (the request itself fails
    and the backend turns that into BackendUnavailable). asyncio hands the orphan to
    the loop's exception handler, which anyio's test runner turns into a test failure.
    Ignore exactly that: an unretrieved connection error, while the endpoint is down.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, ConnectionError) and "never retrieved" in context.get("message", ""):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        gc.collect()  # orphaned tasks report when collected: collect them under this handler
        loop.set_exception_handler(previous)


# ---- the scenario every case shares ----


@dataclass
class Agents:
    conductors: list[Conductor]
    tasks: list[Any]


@pytest.fixture(autouse=True)
def _fresh_progress(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    DONE.clear()
    caplog.set_level(logging.INFO, logger="substantial")
    yield
    DONE.clear()


@pytest.fixture
async def agents_on() -> AsyncIterator[Callable[[Callable[[], Backend]], Awaitable[Agents]]]:
    opened: list[Agents] = []

    async def open_agents(make_backend: Callable[[], Backend]) -> Agents:
        # Two agents, each with its own connections, as if on two machines.
        conductors = [
            Conductor(make_backend(), name=f"agent-{letter}", lease=5.0) for letter in "ab"
        ]
        for conductor in conductors:
            conductor.register(outage_flow)
        group = Agents(conductors, [conductor.run() for conductor in conductors])
        opened.append(group)
        return group

    yield open_agents
    for group in opened:
        for task in group.tasks:
            task.cancel()
        for task in group.tasks:
            await task
        for conductor in group.conductors:
            await conductor.aclose()


async def _survive(
    agents: Agents,
    outage: Callable[[], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
    *,
    outages: int = 1,
    noticed: bool = True,
) -> None:
    """
    Start the runs, hit them with ``outage`` mid-flight, and check the aftermath.

    :param noticed: an agent must have logged the outage (else the test tested nothing);
        False where the outage may be invisible and the caller proves it happened
    """
    starter = agents.conductors[0]
    tag = uuid.uuid4().hex[:8]
    with anyio.fail_after(DEADLINE):
        handles = [await starter.start(outage_flow, n, run_id=f"{tag}-{n}") for n in range(RUNS)]
    # Mid-flight: some runs have taken steps, most have more to take.
    await wait_until(lambda: len(DONE) >= RUNS // 2, DEADLINE, "runs in flight")
    assert len(DONE) < RUNS * STEPS
    await outage()
    with anyio.fail_after(DEADLINE):
        results = [await handle.result() for handle in handles]
    assert results == [_expected(n) for n in range(RUNS)]
    assert {run for run, _ in DONE} == {handle.run_id for handle in handles}

    def lines(conductor: Conductor, text: str) -> list[str]:
        return [
            message
            for record in caplog.records
            if record.name.startswith("substantial")
            and conductor.name in (message := record.getMessage())
            and text in message
        ]

    def recovered() -> bool:
        return all(
            len(lines(c, "reachable again")) == len(lines(c, "backend unavailable"))
            for c in agents.conductors
        )

    # An agent notices the end of an outage at its next poll, which may come after the
    # other agent finished every run.
    await wait_until(recovered, DEADLINE, "every agent saw the backend come back")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    down = {c.name: lines(c, "backend unavailable") for c in agents.conductors}
    # Once per outage, not once per failed request.
    assert all(len(messages) <= outages for messages in down.values()), down
    if noticed:
        assert any(down.values()), "the outage went unnoticed: the test did not test anything"
    for task in agents.tasks:
        assert not task.done(), "an agent died"


# ---- the cases ----


@pytest.mark.redis
async def test_frozen_redis(
    own_redis: RedisServer, agents_on: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from substantial.backends.redis import RedisBackend

    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    agents = await agents_on(
        lambda: RedisBackend(
            # well under the 5 s freeze, well over what a loaded machine takes to answer
            # (0.5 s timed out starts before the freeze at load average 18)
            own_redis.url,
            prefix=prefix,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
    )

    async def freeze() -> None:
        own_redis.pause()
        try:
            await anyio.sleep(5)  # the outage itself
        finally:
            own_redis.resume()

    await _survive(agents, freeze, caplog)


@pytest.mark.redis
async def test_every_redis_connection_killed(
    own_redis: RedisServer, agents_on: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from substantial.backends.redis import RedisBackend

    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    agents = await agents_on(lambda: RedisBackend(own_redis.url, prefix=prefix))
    kills = 4
    admin = aioredis.Redis.from_url(own_redis.url)
    killed = 0

    async def kill_repeatedly() -> None:
        nonlocal killed
        try:
            for round_ in range(kills):
                # Each kill lands while runs are taking steps.
                target = RUNS // 2 + round_ * (RUNS // 4)
                await wait_until(lambda: len(DONE) >= target, DEADLINE, "more steps")  # noqa: B023
                killed += await admin.client_kill_filter(_type="normal", skipme=True)
        finally:
            await admin.aclose()

    # A connection killed while idle is opened again before its next command, unseen:
    # whether an agent logs the outage depends on a kill meeting a command in flight.
    await _survive(agents, kill_repeatedly, caplog, outages=kills, noticed=False)
    assert killed >= kills, f"only {killed} connections were killed in {kills} rounds"


@pytest.mark.s3
@pytest.mark.usefixtures("orphaned_write_errors_ignored")
async def test_s3_refusing_connections(
    own_moto: S3Server, proxy: FaultProxy, agents_on: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from substantial.backends.s3 import S3Backend

    bucket = f"outage-{uuid.uuid4().hex[:16]}"
    await anyio.to_thread.run_sync(own_moto.create_bucket, bucket)
    agents = await agents_on(
        lambda: S3Backend(bucket, endpoint_url=proxy.endpoint_url, region="us-east-1")
    )

    async def refuse() -> None:
        await anyio.to_thread.run_sync(proxy.refuse)
        try:
            assert proxy.refuses()
            await anyio.sleep(5)  # the outage itself
        finally:
            await anyio.to_thread.run_sync(proxy.accept)

    await _survive(agents, refuse, caplog)


@pytest.mark.s3
@pytest.mark.usefixtures("orphaned_write_errors_ignored")
async def test_s3_answering_503(
    own_moto: S3Server, proxy: FaultProxy, agents_on: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from substantial.backends.s3 import S3Backend

    bucket = f"outage-{uuid.uuid4().hex[:16]}"
    await anyio.to_thread.run_sync(own_moto.create_bucket, bucket)
    agents = await agents_on(
        lambda: S3Backend(bucket, endpoint_url=proxy.endpoint_url, region="us-east-1")
    )

    async def slow_down() -> None:
        proxy.failing.set()
        try:
            await anyio.sleep(4)  # the outage itself
        finally:
            proxy.failing.clear()

    await _survive(agents, slow_down, caplog)


def test_proxy_forwards_and_fails(own_moto: S3Server, proxy: FaultProxy, tmp_path: Path) -> None:
    """The fault proxy itself: forwards while healthy, 503 while failing, refuses when closed."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError

    client = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    bucket = f"proxy-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    proxy.failing.set()
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket=bucket, Key="k")
    assert caught.value.response["Error"]["Code"] == "SlowDown"
    proxy.failing.clear()
    proxy.refuse()
    with pytest.raises(EndpointConnectionError):
        client.get_object(Bucket=bucket, Key="k")
    proxy.accept()
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


@workflow(name="outages.waits")
async def waits(c: Context) -> object:
    return await c.receive("go")


@pytest.mark.redis
async def test_a_result_waiter_rides_out_an_outage(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from substantial.backends.redis import RedisBackend

    prefix = f"waiter-{uuid.uuid4().hex[:8]}"
    quick = {"prefix": prefix, "socket_timeout": 0.3, "socket_connect_timeout": 0.3}
    agent = Conductor(RedisBackend(own_redis.url, **quick), poll_interval=0.05, lease=3)
    agent.register(waits)
    client = Conductor(RedisBackend(own_redis.url, **quick))  # no agent: a client only
    caplog.set_level(logging.WARNING, "substantial.client")
    async with agent:
        handle = await client.start("outages.waits", run_id="w")
        outcome: list[object] = []

        async def wait_for_it() -> None:
            outcome.append(await handle.result(timeout=60))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_it)
            own_redis.pause()
            try:
                await wait_until(
                    lambda: "waiting for run w" in caplog.text, 30, "the waiter to meet the outage"
                )
            finally:
                own_redis.resume()
            await client.handle("w").send("go", "through")
    assert outcome == ["through"]
    await client.aclose()
    await agent.aclose()
