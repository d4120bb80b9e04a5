"""A bound on LLM calls in flight that holds across threads and event loops.

``asyncio.Semaphore`` belongs to one event loop, but one :class:`~llmrerank.Reranker` may be used
from several at once (threads each running ``asyncio.run``, the blocking API's background loop, a
framework's own loop). :class:`Limiter` counts under a thread lock and wakes each waiter on its own
loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any


class _Waiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


class Limiter:
    """At most :attr:`limit` holders at once, from any thread and any event loop: ``async with limiter:``.

    Waiters are served first come, first served. :attr:`limit` may be changed while in use: raising it
    lets waiters in at once, lowering it lets the holders above the new limit finish first.
    Copies and unpickled limiters start empty, with the same limit.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """The most holders at once."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        with self._lock:
            self._limit = value
            self._wake()

    @property
    def held(self) -> int:
        """How many hold the limiter now (slots handed to a waiter that has not resumed yet included)."""
        return self._held

    async def acquire(self) -> None:
        """Wait for a slot, on the running loop."""
        with self._lock:
            if self._held < self._limit and not self._waiters:
                self._held += 1
                return
            waiter = _Waiter(asyncio.get_running_loop())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    raise
            # The slot was handed over as the wait was cancelled: give it back (unless _grant will).
            if not waiter.future.cancelled():
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back; the longest waiter gets it."""
        with self._lock:
            self._held -= 1
            self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiters (call with the lock held)."""
        while self._waiters and self._held < self._limit:
            waiter = self._waiters.popleft()
            waiter.granted = True
            self._held += 1
            try:
                waiter.loop.call_soon_threadsafe(self._grant, waiter)
            except RuntimeError:  # its loop is closed: nobody is waiting any more
                self._held -= 1

    def _grant(self, waiter: _Waiter) -> None:
        # On the waiter's loop. A wait cancelled before this ran has already given up: release.
        if waiter.future.cancelled():
            self.release()
        else:
            waiter.future.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[type[Limiter], tuple[int]]:
        return (Limiter, (self._limit,))

    def __deepcopy__(self, memo: dict[int, Any]) -> Limiter:
        return Limiter(self._limit)

    def __repr__(self) -> str:
        return f"Limiter(limit={self._limit}, held={self._held}, waiting={len(self._waiters)})"


__all__ = ["Limiter"]
