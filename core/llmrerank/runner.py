"""The blocking API's event loop: one long-lived loop in a daemon thread, shared by the process.

A fresh ``asyncio.run`` per blocking call would build a new HTTP client (and a new connection,
a new TLS handshake) for every rerank, since async clients belong to one loop. Running every
blocking call on one background loop keeps the SDK clients and their connection pools warm,
works the same whether or not the caller has an event loop of its own, and never nests loops.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from .errors import ConfigurationError

T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use (again in a forked child, which lacks the thread)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                while True:
                    try:
                        loop.run_forever()
                        break
                    except BaseException:
                        # A task let SystemExit or KeyboardInterrupt out (asyncio re-raises those
                        # from run_forever). That task is finished with the exception, which reaches
                        # its own caller; the loop keeps serving everyone else.
                        continue
                loop.close()

            thread = threading.Thread(target=serve, name="llmrerank-loop", daemon=True)
            thread.start()
            ready.wait()
            if _loop is None:
                atexit.register(_shutdown)
            _loop, _pid = loop, os.getpid()
            _threads[loop] = thread
        return _loop


_threads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, threading.Thread] = weakref.WeakKeyDictionary()


def _shutdown(timeout: float = 5.0) -> None:
    """At interpreter exit: finalise the loop's async generators (which closes the SDK clients made on
    it, see :class:`~llmrerank.backends.sdk.ClientPerLoop`), then stop and close the loop."""
    loop = _loop
    if loop is None or _pid != os.getpid() or loop.is_closed():
        return
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout)
    loop.call_soon_threadsafe(loop.stop)
    thread = _threads.get(loop)
    if thread is not None:
        thread.join(timeout)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result, in the caller's context.

    Safe from plain code, from threads, and from inside a running event loop (which is blocked
    while it waits, as with any blocking call). Interrupting the wait cancels the coroutine.
    """
    loop = background_loop()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise ConfigurationError("a blocking llmrerank call was made on llmrerank's own event loop; await it instead")

    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    tasks: list[asyncio.Task[T]] = []

    def finish(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            done.cancel()
        elif (error := task.exception()) is not None:
            done.set_exception(error)
        else:
            done.set_result(task.result())

    def start() -> None:
        # Runs in the caller's context, so the task copies it: context variables (tracing,
        # framework callbacks) reach the rerank as they would in the caller's own loop.
        task = loop.create_task(coro)
        tasks.append(task)
        task.add_done_callback(finish)

    loop.call_soon_threadsafe(start, context=contextvars.copy_context())
    try:
        return done.result()
    except BaseException:
        if tasks and not tasks[0].done():  # interrupted (e.g. KeyboardInterrupt): stop the work
            loop.call_soon_threadsafe(tasks[0].cancel)
        raise


__all__ = ["background_loop", "run_blocking"]


def blocking(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, T]], name: str, doc: str
) -> Callable[Concatenate[S, P], T]:
    """The blocking twin, called ``name`` and documented by ``doc``, of the coroutine method
    ``method``: the same parameters, run by :func:`run_blocking`. It calls the instance's own
    ``method`` (a subclass's override too), as ``return run_blocking(self.method(...))`` would."""
    async_name = method.__name__

    @functools.wraps(method)
    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return run_blocking(getattr(self, async_name)(*args, **kwargs))

    run.__name__ = name
    run.__qualname__ = f"{method.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
    run.__doc__ = doc
    return run
