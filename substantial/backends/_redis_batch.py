"""
Group commit for the Redis backend: commands issued in the same event-loop tick go out
together in one pipeline (``transaction=False``), one round trip and one connection
checkout for the lot.

Nothing about a command changes by being batched: each Lua script is atomic on its own
(as it is when sent alone), commands of other clients may run between two commands of a
batch (as they may between two single commands), and every caller gets its own reply, or
its own exception, for its own command. A caller only issues a command after the ones it
awaited finished, so batching never reorders what one caller depends on; it only lets
commands that were concurrent anyway share a round trip.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["Batcher", "Closed"]


class Closed(RedisConnectionError):
    """The backend was closed with this command queued or in flight (not worth a retry)."""

    def __init__(self) -> None:
        super().__init__("the backend was closed with this command in flight")


@dataclass(slots=True)
class _Call:
    args: tuple[Any, ...]
    write: bool
    future: asyncio.Future[tuple[Any, int | None]]


def _own(exc: Exception) -> Exception:
    """A copy of ``exc`` for one caller, so callers never share one traceback."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


class Batcher:
    """
    Sends the commands queued during one event-loop tick as one pipeline.

    :param client: the client whose pool the pipelines use
    :param scripts: Lua sources by SHA-1, loaded again when the server answers
        ``NOSCRIPT`` (a restarted or flushed server); such a command did not run, so it
        is sent once more after the load
    :param wait_replicas: with writes in a batch, end the pipeline with one ``WAIT`` for
        this many replicas; every write of the batch gets the acknowledged count
    :param wait_timeout: the ``WAIT`` timeout, in seconds
    """

    def __init__(
        self,
        client: aioredis.Redis,
        scripts: dict[str, str],
        *,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._wait_replicas = wait_replicas
        self._wait_ms = round(wait_timeout * 1000)
        self._pending: list[_Call] = []
        self._loaded = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections taken from the pool once and kept: one per batch in flight.
        self._idle: list[AbstractConnection] = []
        #: Pipelines sent so far (round trips, retries after ``NOSCRIPT`` included).
        self.pipelines = 0

    async def call(self, *args: Any, write: bool = False) -> tuple[Any, int | None]:
        """
        Queue one command and wait for its reply.

        :return: the reply, and for a write with ``wait_replicas`` the number of replicas
            that acknowledged its batch (``None`` otherwise)
        :raises redis.exceptions.RedisError: this command's error reply, or a copy of the
            batch's connection error (the command may or may not have run)
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, int | None]] = loop.create_future()
        if not self._pending:
            self._launch(loop)
        self._pending.append(_Call(args, write, future))
        return await future

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the task that sends what is pending when it first runs (next tick)."""
        task = loop.create_task(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        batch, self._pending = self._pending, []
        try:
            load = frozenset() if self._loaded else frozenset(self._scripts)
            self._loaded = True  # the first batch loads every script before its commands
            outcomes = await self._send(batch, load=load)
        except Exception as exc:  # the whole pipeline failed: each caller gets a copy
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(_own(exc))
            return
        except BaseException:  # cancelled by aclose: as when a client closes under a command
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(Closed())
            raise
        for call, outcome in zip(batch, outcomes, strict=True):
            if call.future.done():  # the caller was cancelled; its command still ran
                continue
            if isinstance(outcome, BaseException):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)

    async def _send(self, batch: list[_Call], *, load: frozenset[str] = frozenset()) -> list[Any]:
        """
        One pipeline for ``batch``, after a ``SCRIPT LOAD`` of each of ``load``: one
        outcome (reply pair or exception) per call.
        """
        commands: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", self._scripts[sha]) for sha in load]
        commands.extend(call.args for call in batch)
        wait = bool(self._wait_replicas) and any(call.write for call in batch)
        if wait:
            commands.append(("WAIT", self._wait_replicas, self._wait_ms))
        replies = (await self._exchange(commands))[len(load) :]
        acknowledged = replies.pop() if wait else None
        outcomes: list[Any] = [
            reply if isinstance(reply, Exception) else (reply, acknowledged if call.write else None)
            for call, reply in zip(batch, replies, strict=True)
        ]
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        shas = frozenset(str(batch[i].args[1]) for i in missing) & self._scripts.keys()
        if shas and not load:
            again = await self._send([batch[i] for i in missing], load=shas)
            for i, outcome in zip(missing, again, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """
        Write ``commands`` in one packet on a connection of our own and read one reply
        each (an error reply as its exception). Any other failure closes the connection,
        so that no reply is ever left unread for the next batch on it.
        """
        self.pipelines += 1
        if self._idle:
            connection = self._idle.pop()
        else:
            pool = self._client.connection_pool
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # Closed by the server while idle (restart, CLIENT KILL, timeout): reconnect
            # before sending, as the pool does on checkout.
            if connection.is_connected and await connection.can_read():
                await connection.disconnect()
            packed = connection.pack_commands(commands)
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(connection)
        return replies

    async def aclose(self) -> None:
        """
        Stop: the commands in flight or queued fail with a connection error, as they did
        when the client closed under them before batching (their outcome is unknown).
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        queued, self._pending = self._pending, []  # a task cancelled before it ran
        for call in queued:
            if not call.future.done():
                call.future.set_exception(Closed())
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._client.connection_pool.release(connection)
