"""
A loopback HTTP proxy that adds a fixed delay to every request: an S3 endpoint (moto) at
the latency of a real object store, for the bench and the tests.

    with LatencyProxy(upstream_port=moto_port, delay=0.030) as proxy:
        backend = S3Backend("bucket", endpoint_url=proxy.endpoint_url)
        ...
        print(proxy.requests)

The proxy runs its own event loop in a daemon thread, so it neither blocks nor is blocked
by the caller's loop; it still shares the caller's GIL. To keep its CPU out of a
measurement, run it as a process of its own::

    python -m bench.latency_proxy UPSTREAM_PORT --delay 0.030   # prints its port

and read its counts with ``LatencyProxy.stats(port)`` (``GET /__latency_proxy__``).

Client connections are kept alive (HTTP/1.1) and served one request after another, as a
real endpoint does; each request waits ``delay`` seconds and is then forwarded on a fresh
upstream connection. Requests on different connections are delayed concurrently, so a
client with N connections in flight sees N requests per ``delay``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import urllib.request
from types import TracebackType
from typing import Self

__all__ = ["LatencyProxy"]

#: The path the proxy answers itself, with its counts as JSON (no delay, not counted).
STATS_PATH = "/__latency_proxy__"

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "expect"}
)


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]] | None:
    """The start line and headers of one HTTP message, or ``None`` at a clean EOF."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    lines = raw[:-4].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value
    return ""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class LatencyProxy:
    """
    A forwarder on ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` that delays each
    request by ``delay`` seconds and counts them in :attr:`requests`.

    :param upstream_port: the port of the HTTP server to forward to (e.g. moto's)
    :param delay: seconds added to every request, before it is forwarded
    :param port: the port to listen on; 0 (the default) picks a free one
    """

    def __init__(self, upstream_port: int, delay: float = 0.030, *, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.port = port
        #: Requests forwarded so far (each one delayed once).
        self.requests = 0
        #: Most requests waiting or in flight at one time so far.
        self.max_in_flight = 0
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL to give an S3 client as its ``endpoint_url``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen, in a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(main())
            except BaseException:
                pass
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        """Stop listening and close the connections. Safe to call twice."""
        loop, stop, thread = self._loop, self._stop, self._thread
        self._thread = None
        if loop is not None and stop is not None and thread is not None:
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=10)

    @staticmethod
    def stats(port: int) -> dict[str, int]:
        """The counts of the proxy listening on ``port`` (in this process or another)."""
        url = f"http://127.0.0.1:{port}{STATS_PATH}"
        with urllib.request.urlopen(url, timeout=10) as response:
            counts: dict[str, int] = json.load(response)
        return counts

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection stays open for another."""
        head = await _read_head(reader)
        if head is None:
            return False
        start, headers = head
        method = start.split(b" ", 1)[0]
        if start.split(b" ")[1] == STATS_PATH.encode():
            counts = json.dumps({"requests": self.requests, "max_in_flight": self.max_in_flight})
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(counts)}\r\n\r\n{counts}".encode()
            )
            await writer.drain()
            return True
        if _header(headers, "expect").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in _header(headers, "transfer-encoding").lower():
            body = await _read_chunked(reader)
        else:
            body = await reader.readexactly(int(_header(headers, "content-length") or 0))
        self.requests += 1
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            await asyncio.sleep(self.delay)
            response = await self._forward(start, headers, body, method == b"HEAD")
        finally:
            self._in_flight -= 1
        writer.write(response)
        await writer.drain()
        return _header(headers, "connection").lower() != "close"

    async def _forward(
        self, start: bytes, headers: list[tuple[str, str]], body: bytes, head: bool
    ) -> bytes:
        """Send one request upstream on its own connection; the response to relay."""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            lines = [start]
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    lines.append(f"{name}: {value}".encode("latin-1"))
            lines.append(f"Content-Length: {len(body)}".encode())
            lines.append(b"Connection: close")
            up_writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            await up_writer.drain()
            while True:
                answer = await _read_head(up_reader)
                if answer is None:
                    raise ConnectionError("upstream closed without a response")
                status, response_headers = answer
                code = int(status.split(b" ")[1])
                if code != 100:
                    break
            if head or code in (204, 304):
                data = b""
            elif "chunked" in _header(response_headers, "transfer-encoding").lower():
                data = await _read_chunked(up_reader)
            elif length := _header(response_headers, "content-length"):
                data = await up_reader.readexactly(int(length))
            else:
                data = await up_reader.read()
        finally:
            up_writer.close()
        out = [status]
        for name, value in response_headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP or (
                lower == "content-length" and not head and code not in (204, 304)
            ):
                continue
            out.append(f"{name}: {value}".encode("latin-1"))
        if not head and code not in (204, 304):
            out.append(f"Content-Length: {len(data)}".encode())
        return b"\r\n".join(out) + b"\r\n\r\n" + data


def main() -> None:
    """Run a proxy until stdin closes (or the process is killed); print its port first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("--delay", type=float, default=0.030, help="seconds per request")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free one")
    args = parser.parse_args()
    with LatencyProxy(args.upstream_port, args.delay, port=args.port) as proxy:
        print(proxy.port, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
