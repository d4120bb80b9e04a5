"""What the SDK-based backends (OpenAI, Anthropic) share: client per event loop, settings, error mapping.

The SDKs are imported by the backends themselves when one is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import importlib
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ..adaptive import on_request, on_response, retry_after
from ..errors import (
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    InvalidResponseError,
    RateLimitError,
    error_from_status,
)
from .base import RERANK_ENDS, Backend
from .servers import call_defaults

T = TypeVar("T")
logger = logging.getLogger("llmrerank")


class _Entry:
    """One loop's client and the async generator that closes it when that loop shuts down."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        self.loop = weakref.ref(loop)
        self.client = client
        self.guard: AsyncGenerator[None, None] | None = None


class ClientPerLoop:
    """One SDK client per running event loop, created on first use by ``factory``, closed with its loop.

    httpx async clients must not be shared across event loops, and callers may run each rerank in
    its own ``asyncio.run``. Each client comes with a suspended async generator registered with its
    loop; ``asyncio.run`` (like ``asyncio.Runner`` and pytest-asyncio) finalises such generators with
    ``loop.shutdown_asyncgens()`` while the loop still runs, which closes the client and its
    sockets there. A loop closed without that step leaves its client to :meth:`_reap`: marked
    closed and dropped (asyncio then frees the sockets when their transports are collected).
    :meth:`aclose` / :meth:`close` close every client now; clients are made again on demand.
    """

    CLOSE_TIMEOUT = 10.0
    """Seconds a close waits for a client living on another thread's loop."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self._clients: dict[int, _Entry] = {}
        self._lock = threading.RLock()  # re-entered when _reap finishes a guard

    def get(self) -> Any:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(id(loop))
            if entry is None or entry.loop() is not loop:
                self._reap()
                entry = self._clients[id(loop)] = _Entry(loop, self.factory())
                entry.guard = self._guard(id(loop), entry)
                # Started here, in the loop's thread: asyncio's first-iteration hook registers the
                # generator with the loop, which finalises it at shutdown (see the class docstring).
                first: Any = entry.guard.asend(None)
                with contextlib.suppress(StopIteration):
                    first.send(None)
            return entry.client

    async def _guard(self, key: int, entry: _Entry) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._clients.get(key) is entry:
                    del self._clients[key]
            loop = entry.loop()
            if loop is not None and not loop.is_closed():
                await _close(entry.client)

    def _reap(self) -> None:
        """Drop the clients of loops that are gone or closed (call with the lock held)."""
        for key, entry in list(self._clients.items()):
            loop = entry.loop()
            if loop is None or loop.is_closed():
                del self._clients[key]
                _abandon(entry)

    def _take_all(self) -> list[_Entry]:
        with self._lock:
            entries = list(self._clients.values())
            self._clients.clear()
        return entries

    async def aclose(self) -> None:
        """Close every client: on this loop directly, on loops running in other threads through them."""
        running = asyncio.get_running_loop()
        for entry in self._take_all():
            loop = entry.loop()
            if loop is running:
                await _finish(entry)
            elif loop is not None and loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_finish(entry), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(future), self.CLOSE_TIMEOUT)
            else:
                _settle(entry, loop)

    def close(self) -> None:
        """Blocking :meth:`aclose`; inside a running loop, that loop's client is closed by a task on it."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for entry in self._take_all():
            loop = entry.loop()
            if loop is not None and loop is running:
                _background_tasks.add(task := loop.create_task(_finish(entry)))
                task.add_done_callback(_background_tasks.discard)
            elif loop is not None and loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_finish(entry), loop)
                with contextlib.suppress(Exception):
                    future.result(self.CLOSE_TIMEOUT)
            else:
                _settle(entry, loop)

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)


_background_tasks: set[asyncio.Task[None]] = set()

_CALL_ENDS: contextvars.ContextVar[float | None] = contextvars.ContextVar("llmrerank_call_ends", default=None)
"""``time.monotonic()`` by which the SDK call in progress must end (its timeout or the rerank's deadline)."""


async def _refuse_late_retry(response: Any) -> None:
    """httpx response hook: a ``retry-after`` that ends past the call's end gets ``x-should-retry: false``,
    which both SDKs obey, so they raise the error at once instead of sleeping through the budget."""
    wait = retry_after(response.headers)
    ends = _CALL_ENDS.get()
    if wait is not None and ends is not None and time.monotonic() + wait > ends:
        response.headers["x-should-retry"] = "false"


async def _close(client: Any) -> None:
    try:
        await client.close()
    except Exception as exc:  # a client that fails to close must not fail the caller's shutdown
        logger.debug("llmrerank: closing an SDK client failed: %s: %s", type(exc).__name__, exc)


async def _finish(entry: _Entry) -> None:
    """Close ``entry``'s client on its own loop, through its guard so the loop forgets the guard too."""
    if entry.guard is not None:
        await entry.guard.aclose()
    else:
        await _close(entry.client)


def _settle(entry: _Entry, loop: asyncio.AbstractEventLoop | None) -> None:
    """An entry whose loop is not running: closed loops are reaped; an idle loop keeps the guard,
    which asyncio finalises on that loop when it runs again or shuts down."""
    if loop is None or loop.is_closed():
        _abandon(entry)
    # else: dropping our reference hands the guard to asyncio's async-generator finaliser.


def _abandon(entry: _Entry) -> None:
    """Forget a client whose loop is closed: it cannot run ``close()`` any more.

    The guard is finished by hand (so asyncio never schedules it on the dead loop), and the client's
    own close is stepped once, which marks it closed before it fails on the dead loop: the SDK then
    never tries to close it from another loop.
    """
    if entry.guard is not None:
        step: Any = entry.guard.aclose()
        with contextlib.suppress(BaseException):
            step.send(None)
        step.close()
    closing: Any = entry.client.close()
    try:
        with contextlib.suppress(BaseException):  # StopIteration, or "Event loop is closed"
            closing.send(None)
    finally:
        closing.close()


def describe(value: Any) -> str:
    """A short description of an unexpected response body, for error messages."""
    if isinstance(value, str | bytes):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        start = " ".join(text.split())[:80]
        kind = (
            "an HTML page"
            if "<html" in text[:500].lower()
            else "an event stream"
            if start.startswith(("data:", "event:"))
            else "text"
        )
        return f"{kind} {start!r}"
    if isinstance(value, list):
        return f"a JSON array of {len(value)} items"
    if isinstance(value, dict):
        return f"a JSON object with keys {sorted(map(str, value))[:8]}"
    fields = getattr(value, "model_fields_set", None)
    if fields is not None:
        return f"a {type(value).__name__} with no usable content (fields set: {sorted(fields)[:8]})"
    return f"a {type(value).__name__}"


class SDKBackend(Backend):
    """A backend over an official async SDK client (``openai.AsyncOpenAI``, ``anthropic.AsyncAnthropic``).

    Subclasses name the SDK's async client and base error classes, pass the imported SDK module to
    ``__init__``, and implement :meth:`generate` with :meth:`_current_client`, turning the SDK's
    exceptions into typed errors with :meth:`_error`. ``timeout`` and ``max_retries`` go to the
    SDK, which does the retrying.
    """

    client_class: str
    """Name of the SDK's async client class (``AsyncOpenAI``)."""
    error_class: str
    """Name of the SDK's base exception class (``OpenAIError``)."""
    title: str
    """The provider's name in messages (``OpenAI``)."""
    base_url_env: str
    """The environment variable the SDK reads the base URL from when none is given."""

    def __init__(
        self,
        sdk: Any,
        model: str,
        *,
        api_key: str | None,
        base_url: str | None,
        client: Any,
        timeout: float | None,
        max_retries: int | None,
        temperature: float | None,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        self._sdk = sdk
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        given = str(getattr(client, "base_url", "") or "") if client is not None else ""
        self.server_url: str | None = given or base_url or os.environ.get(self.base_url_env) or None
        """The server's base URL as the SDK will resolve it (None: the provider's own API)."""
        # Left out, they depend on the server (call_defaults): a local one gets a longer timeout, no retry.
        self.timeout, self.max_retries = call_defaults(self.server_url, timeout, max_retries)
        self.temperature = temperature
        self.default_headers = dict(default_headers) if default_headers else None
        self._client = client
        self._clients = ClientPerLoop(self._make_client)

    def _make_client(self) -> Any:
        try:
            return getattr(self._sdk, self.client_class)(
                api_key=self.api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
                default_headers=self.default_headers,
                # The SDK's own HTTP client, with hooks that stop retries which could not finish in time
                # and let the adaptive limiter see every 429, the ones the SDK retries included.
                http_client=self._sdk.DefaultAsyncHttpxClient(
                    event_hooks={"request": [on_request], "response": [_refuse_late_retry, on_response]}
                ),
            )
        except (self.sdk_error, ValueError) as exc:  # e.g. no API key anywhere
            raise ConfigurationError(f"cannot create the {self.title} client: {exc}") from exc

    def cache_identity(self) -> dict[str, object]:
        """The server (base URL, as the SDK will resolve it) and the sampling settings."""
        return {"base_url": (self.server_url or "").rstrip("/"), "temperature": self.temperature}

    def __getstate__(self) -> dict[str, Any]:
        if self._client is not None:
            raise TypeError(f"cannot pickle {type(self).__name__} made with client=: pass api_key/base_url instead")
        return self._state()

    def _state(self) -> dict[str, Any]:
        # Clients belong to the event loops of this process: a copy makes its own.
        state = self.__dict__.copy()
        state["_sdk"] = self._sdk.__name__
        del state["_clients"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sdk = importlib.import_module(state["_sdk"])
        self._clients = ClientPerLoop(self._make_client)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        if self._client is not None:
            memo[id(self._client)] = self._client  # the caller's client is shared, not copied
        clone.__setstate__(copy.deepcopy(self._state(), memo))
        return clone

    @property
    def sdk_error(self) -> type[Exception]:
        """The SDK's base exception class: what :meth:`generate` turns into a typed error."""
        error: type[Exception] = getattr(self._sdk, self.error_class)
        return error

    def _current_client(self) -> Any:
        return self._client if self._client is not None else self._clients.get()

    async def _request(self, call: Awaitable[T]) -> T:
        """Await an SDK call, retries included, for at most :attr:`timeout` seconds; its errors become
        typed llmrerank errors.

        The SDK's own timeout bounds each network operation (a server dripping bytes passes it); this
        bounds the whole call. A retry the server asks to wait for (``retry-after``) past the end of
        the call or of the rerank's deadline is not waited for: the call fails at once with a
        :class:`~llmrerank.errors.RateLimitError` carrying ``retry_after``.
        """
        ends = time.monotonic() + self.timeout
        deadline = RERANK_ENDS.get()
        token = _CALL_ENDS.set(ends if deadline is None else min(ends, deadline))
        try:
            return await asyncio.wait_for(call, self.timeout)
        except asyncio.TimeoutError:
            raise BackendTimeoutError(f"no complete answer within timeout={self.timeout}s", backend=self.name) from None
        except self.sdk_error as exc:
            raise self._error(exc) from exc
        except ValueError as exc:  # a body the SDK could not decode
            raise InvalidResponseError(f"invalid response: {exc}", backend=self.name) from exc
        except TypeError as exc:
            # The Anthropic SDK finds out at request time that it has no credentials at all.
            if "authentication" in str(exc).lower():
                raise ConfigurationError(f"no {self.title} credentials: {exc}") from exc
            raise
        finally:
            _CALL_ENDS.reset(token)

    def _is_rate_limit(self, exc: Exception) -> bool:
        """Whether ``exc`` asks the caller to slow down (the SDK's RateLimitError; subclasses add more)."""
        return isinstance(exc, self._sdk.RateLimitError)

    def _error(self, exc: Exception) -> BackendError:
        """The typed llmrerank error for an SDK exception (see :func:`~llmrerank.errors.error_from_status`)."""
        status = getattr(exc, "status_code", None)
        message = f"{type(exc).__name__}: {exc}"
        if self._is_rate_limit(exc):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return RateLimitError(message, status_code=status, backend=self.name, retry_after=retry_after(headers))
        if isinstance(exc, self._sdk.APITimeoutError):
            return BackendTimeoutError(message, backend=self.name)
        return error_from_status(status, message, backend=self.name)

    async def aclose(self) -> None:
        """Close the clients this backend made, on every event loop (a ``client`` you passed in stays open).

        The backend stays usable: the next call makes a new client.
        """
        await self._clients.aclose()

    def close(self) -> None:
        """Blocking :meth:`aclose`; safe from plain code, threads and running event loops."""
        self._clients.close()


__all__ = ["ClientPerLoop", "SDKBackend", "retry_after"]
