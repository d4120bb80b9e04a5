"""The base of the adapters' backends over a framework's own model (a LangChain chat model, a LlamaIndex LLM).

Framework models keep their async HTTP clients per model object, bound to the event loop that made
them, and the blocking API of llmrerank runs on its own background loop. So inside a blocking call
of an adapter (:func:`blocking`) a framework model is called through its blocking API, the one the
caller's own code would use, each call in one of the backend's own threads.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .base import Backend, WorkerThreads

T = TypeVar("T")

BLOCKING_CALLER: contextvars.ContextVar[bool] = contextvars.ContextVar("llmrerank_blocking_caller", default=False)
"""True inside :func:`blocking`: framework models are called through their blocking API."""


def blocking(call: Callable[[], T]) -> T:
    """``call()`` in a copy of this context marked as a blocking caller (:data:`BLOCKING_CALLER`);
    context variables that ``call`` sets stay in the copy."""

    def run() -> T:
        BLOCKING_CALLER.set(True)
        return call()

    return contextvars.copy_context().run(run)


class FrameworkBackend(Backend):
    """A :class:`~llmrerank.Backend` over a framework's model: :meth:`call` picks its blocking or async API.

    The blocking calls run in this backend's own threads (``max_workers``: the reranker's
    ``max_concurrency``), not in the event loop's default executor, which has ``cpus + 4`` threads
    for the whole process and would cap the calls below ``max_concurrency``.
    """

    def __init__(self, *, max_workers: int) -> None:
        self._threads = WorkerThreads(max_workers)
        """Threads for blocking calls."""

    def calls_blocking(self) -> bool:
        """Whether the model is called through its blocking API: inside :func:`blocking`."""
        return BLOCKING_CALLER.get()

    async def call(self, blocking_api: Callable[..., T], async_api: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``blocking_api(*args)`` in a worker thread when :meth:`calls_blocking`, else ``async_api(*args)``.

        The thread runs the call in a copy of this context, so the model's callbacks and spans still
        nest under the rerank's.
        """
        if self.calls_blocking():
            return await self._threads.run(blocking_api, *args)
        return await async_api(*args)

    async def aclose(self) -> None:
        """Let the blocking calls' threads end (the model itself is the caller's)."""
        self._threads.shutdown()


__all__ = ["BLOCKING_CALLER", "FrameworkBackend", "blocking"]
