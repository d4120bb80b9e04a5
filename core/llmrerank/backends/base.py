"""The backend contract: turn one prompt into one completion (optionally with choice log-probs).

Backends with :attr:`Backend.supports_likelihood` also score a given text: the log-probability of a
continuation after a context (:meth:`Backend.continuation_logprobs`), for query-likelihood ranking.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigurationError
from ..protocol import Completion, LogLikelihood, Prompt

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..fusion import Fusion

T = TypeVar("T")


RERANK_ENDS: contextvars.ContextVar[float | None] = contextvars.ContextVar("llmrerank_rerank_ends", default=None)
"""``time.monotonic()`` at which the rerank in progress reaches its ``deadline`` (None: no deadline).

Set by the driver; a backend may use it to give up early on waits that would outlast the rerank."""


def token_count(value: Any) -> int:
    """A token count as a server reported it, or 0 (unknown) when it is not a whole number >= 0.

    A count of ``"abc"``, ``-5`` or ``1.5`` says nothing about the answer beside it: the answer is
    kept and the count is left out of the usage, as a missing one is.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return 0
    return int(value) if value >= 0 else 0


def counts_for_choice(text: str, key: str) -> bool:
    """Whether a token's lower-cased ``text`` counts for the lower-cased choice ``key`` (its start).

    ``text`` must start with ``key``; after a letter the next character must not be a letter. So
    ``"10"`` counts for ``"1"`` and ``"yes,"`` for ``"yes"``, but ``"answer"`` does not count for
    ``"a"``. Every backend that fills :attr:`Completion.choice_logprobs` matches tokens this way.
    """
    if not key or not text.startswith(key):
        return False
    return len(text) == len(key) or not (key[-1].isalpha() and text[len(key)].isalpha())


class Closing:
    """``with`` / ``async with`` in terms of the class's ``close()`` / ``aclose()``."""

    def close(self) -> None:
        """Release what the object holds."""

    async def aclose(self) -> None:
        """Async :meth:`close`."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Backend(Closing, ABC):
    """An LLM that answers prompts. Subclasses implement :meth:`generate`.

    Retries and per-call timeouts are the backend's business (``max_retries``, ``timeout``: for
    the SDK backends, :func:`~llmrerank.backends.sdk.retry_wait`); a backend raises
    :class:`~llmrerank.errors.BackendError` subclasses once they are spent.
    """

    name: str = "backend"
    """Short backend name, used in cache keys and reports (``openai``, ``anthropic``, ``local``)."""
    model: str = ""
    """Model name, free text."""
    supports_logprobs: bool = False
    """True when :meth:`generate` fills ``choice_logprobs`` for prompts with ``choices``."""
    batch_size: int = 1
    """How many prompts :meth:`generate_batch` handles at once; the driver chunks by this."""
    preferred_strategy: str = "listwise"
    """Strategy used when the caller names none."""
    supports_likelihood: bool = False
    """True when :meth:`continuation_logprobs` works (needed by the ``query_likelihood`` strategy)."""
    preferred_fusion: Fusion | None = None
    """The :class:`~llmrerank.fusion.Fusion` a :class:`~llmrerank.Reranker` applies by default with the
    preferred strategy when the documents carry first-stage scores (None: no fusion)."""
    context_tokens: int | None = None
    """The model's context window in tokens, when known: configured, discovered
    (:meth:`discover`) or learned from a context-length error. Strategies size prompts to fit it."""
    answer_reserve: int = 0
    """Tokens the backend asks for on top of every prompt's answer budget (a reasoning budget):
    the context must hold them too."""
    pointwise_method: str = "expected"
    """The log-prob scoring the pointwise strategy uses with this backend when its ``method`` is
    ``auto``: ``expected`` (the expected 0-10 rating) or ``yes_no`` (see :class:`~llmrerank.LocalBackend`)."""

    def prompt_room(self) -> int | None:
        """Tokens a prompt and its answer may take together: :attr:`context_tokens` less
        :attr:`answer_reserve`; None when the context size is unknown."""
        if self.context_tokens is None:
            return None
        return max(self.context_tokens - self.answer_reserve, 1)

    async def discover(self) -> None:
        """Ask the server, once, what it reports about itself (its context size); optional, never raises.

        Called before each rerank; a backend caches what it learned.
        """

    async def answers(self) -> bool | None:
        """Whether the server still answers at all, asked by the driver after a call timed out: a
        quick request that needs no model work. False stops the rerank's later calls; None (the
        default) means the backend cannot tell. Must not raise."""
        return None

    async def count_tokens(self, text: str) -> int | None:
        """How many tokens the model's own tokenizer makes of ``text``, where the backend can ask it
        (a server's ``/tokenize``); None when it cannot. Never raises."""
        return None

    @abstractmethod
    async def generate(self, prompt: Prompt) -> Completion:
        """Answer one prompt."""

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        """Answer several prompts; an entry is an exception when that prompt failed."""
        return list(await asyncio.gather(*(self.generate(p) for p in prompts), return_exceptions=True))

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        """log P(continuation | context) for each ``(context, continuation)`` pair; an entry is an
        exception when that pair failed. Only backends with :attr:`supports_likelihood` implement it."""
        raise ConfigurationError(f"{type(self).__name__} cannot score a continuation's log-probability")

    def cache_identity(self) -> dict[str, object]:
        """What besides :attr:`name` and :attr:`model` makes this backend answer differently (server
        address, sampling settings): part of every response-cache key. JSON-able values."""
        return {}

    async def aclose(self) -> None:
        """Release clients and connections; optional. The backend stays usable (clients are made again)."""

    def close(self) -> None:
        """Blocking :meth:`aclose`, run on llmrerank's background event loop."""
        from ..runner import run_blocking

        run_blocking(self.aclose())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


class _Inner:
    """A :class:`Forwarding` attribute read from, and written to, the wrapped backend."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Forwarding | None, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.inner, self.name)

    def __set__(self, obj: Forwarding, value: Any) -> None:
        setattr(obj.inner, self.name, value)


class Forwarding(Backend):
    """A backend that stands in for ``inner``: its settings are read through (the context size too,
    which a rerank may discover or learn while it runs) and every call goes to ``inner``. Subclasses
    override what they do differently (count calls, record prompts)."""

    name = _Inner()
    model = _Inner()
    supports_logprobs = _Inner()
    batch_size = _Inner()
    preferred_strategy = _Inner()
    supports_likelihood = _Inner()
    preferred_fusion = _Inner()
    context_tokens = _Inner()
    answer_reserve = _Inner()
    pointwise_method = _Inner()
    # Read with getattr where a backend has them (the SDK backends' address, a cache salt).
    server_url = _Inner()
    cache_salt = _Inner()

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    async def discover(self) -> None:
        await self.inner.discover()

    async def answers(self) -> bool | None:
        return await self.inner.answers()

    async def count_tokens(self, text: str) -> int | None:
        return await self.inner.count_tokens(text)

    async def generate(self, prompt: Prompt) -> Completion:
        return await self.inner.generate(prompt)

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        return await self.inner.generate_batch(prompts)

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        return await self.inner.continuation_logprobs(pairs)

    def cache_identity(self) -> dict[str, object]:
        return self.inner.cache_identity()

    async def aclose(self) -> None:
        await self.inner.aclose()


class WorkerThreads:
    """A backend's own threads for blocking calls (a framework model's ``invoke`` / ``chat``).

    ``asyncio.to_thread`` would share the event loop's default executor (``min(32, cpus + 4)``
    threads for the whole process), capping concurrent calls below ``max_concurrency``. Started on
    first use; :meth:`shutdown` lets the threads end. Copies and unpickled ones start unstarted.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the threads, in a copy of the caller's context."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="llmrerank-call"
                )
            pool = self._pool
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    def shutdown(self) -> None:
        """Let the threads end once their calls are done (new calls start new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def __reduce__(self) -> tuple[type[WorkerThreads], tuple[int]]:
        # copy, deepcopy and pickle alike: a new pool of the same size, its threads started on first use
        return (WorkerThreads, (self.max_workers,))
