"""
The worker threads that run sync step functions.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits,
so one step blocked in a sync call kept a stopped agent's process alive until the call
returned (45-60 s measured, after SIGTERM and the grace period). These threads are
daemons: once the agent has stopped and released its leases, the process exits and the
abandoned step runs again elsewhere, as after a crash (steps are at-least-once).

A call given up on (a step timeout, a cancelled run) stops counting against the pool's
size: its thread ends when the call returns, and a new thread takes its place, so steps
that hang for good cannot use up the pool and starve every other run of the agent.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["DaemonThreadPool"]

_Work = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonThreadPool(concurrent.futures.Executor):
    """
    An executor of daemon threads, started on demand up to ``max_workers`` and kept
    for reuse. Made for ``loop.run_in_executor``: a call whose caller gave up keeps its
    thread until it returns; nothing waits for it at exit.
    """

    def __init__(self, max_workers: int, *, name: str = "substantial-step") -> None:
        self._max = max_workers
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # idle threads, less calls waiting for one
        self._shutdown = False
        self._abandoned: set[concurrent.futures.Future[Any]] = set()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        if kwargs:
            raise TypeError("DaemonThreadPool.submit takes positional arguments only")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._work.put((future, fn, args))
            if self._idle <= 0 and self._threads < self._max:
                self._start_thread()
            else:
                self._idle -= 1  # an idle thread takes it (or the next one free)
        return future

    def abandon(self, future: concurrent.futures.Future[Any]) -> None:
        """
        Give up on a call: if it is running, its thread no longer counts against the
        pool's size (it ends once the call returns), and a call waiting for a thread
        gets a new one.
        """
        with self._lock:
            if not future.running() or future in self._abandoned:
                return
            self._abandoned.add(future)
            self._threads -= 1
            if self._idle < 0 and not self._shutdown:
                self._idle += 1  # the new thread takes a waiting call
                self._start_thread()

    def _start_thread(self) -> None:
        self._threads += 1
        name = f"{self._name}-{self._threads}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result  # an idle thread must not keep the last step's value alive
            with self._lock:
                if future in self._abandoned:
                    self._abandoned.discard(future)
                    return  # a fresh thread took this one's place
                self._idle += 1
            del item, future, fn, args

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let idle threads end; running calls finish on their own (never joined)."""
        with self._lock:
            self._shutdown = True
            for _ in range(self._threads):
                self._work.put(None)
