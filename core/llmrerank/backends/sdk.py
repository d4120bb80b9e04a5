"""What the SDK-based backends (OpenAI, Anthropic) share: client per event loop, settings, error mapping.

The SDKs are imported by the backends themselves when one is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, TypedDict, TypeVar

from ..adaptive import on_request, on_response, retry_after
from ..errors import (
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    InvalidResponseError,
    RateLimitError,
    ServerUnreachableError,
    error_from_status,
)
from .base import RERANK_ENDS, Backend
from .servers import call_defaults, is_local_url

T = TypeVar("T")
logger = logging.getLogger("llmrerank")


class ClientOptions(TypedDict, total=False):
    """The keyword arguments every SDK backend takes (``OpenAIBackend(model, **options)``)."""

    api_key: str | None
    """The API key; None: the SDK's environment variable (a server on this machine needs none)."""
    base_url: str | None
    """The server; None: the SDK's environment variable, else the provider's own API."""
    client: Any
    """An SDK async client used as is (and not closed by ``aclose()``); None: one per event loop."""
    timeout: float | None
    """Seconds per call, retries included; None: by server (:func:`~llmrerank.backends.servers.call_defaults`)."""
    max_retries: int | None
    """Retries per call, by the rule of :func:`retry_wait`; None: by server."""
    temperature: float | None
    """The sampling temperature; None leaves it out of the request (default: the backend's)."""
    default_headers: Mapping[str, str] | None
    """Headers sent with every request."""


class _Entry:
    """One loop's client and the async generator that closes it when that loop shuts down."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        self.loop = weakref.ref(loop)
        self.client = client
        self.guard: AsyncGenerator[None, None] | None = None
        self.closing: asyncio.Future[None] | None = None
        """The client's one close, once started (:func:`_closing`)."""


class ClientPerLoop:
    """One SDK client per running event loop, created on first use by ``factory``, closed with its loop.

    httpx async clients must not be shared across event loops, and callers may run each rerank in
    its own ``asyncio.run``. Each client comes with a suspended async generator registered with its
    loop; ``asyncio.run`` (like ``asyncio.Runner`` and pytest-asyncio) finalises such generators with
    ``loop.shutdown_asyncgens()`` while the loop still runs, which closes the client and its
    sockets there. A loop closed without that step leaves its client to :meth:`_reap`: marked
    closed and dropped (asyncio then frees the sockets when their transports are collected).
    :meth:`aclose` / :meth:`close` close every client now; clients are made again on demand.

    A ``ClientPerLoop`` dropped without a close (a reranker built per web request and let go) has
    its clients closed on their loops at once, by a finaliser that holds them. They must never
    become garbage themselves while open: the collector would finalise their transports (which
    closes the sockets behind the event loop's back) before a resurrected guard closed the client
    again, and that second close unregisters the socket *numbers* from the loop's selector, which
    live connections may have reused by then: those then never see their answer. So nothing a
    client's guard refers to leads back to its ``ClientPerLoop``, and the finaliser keeps the
    clients reachable until their close has run.
    """

    CLOSE_TIMEOUT = 10.0
    """Seconds a close waits for a client living on another thread's loop."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self._clients: dict[int, _Entry] = {}
        self._lock = threading.RLock()  # re-entered when _reap finishes a guard
        finalizer = weakref.finalize(self, _drop_all, self._clients, self._lock)
        finalizer.atexit = False  # at exit the background loop's shutdown closes them (llmrerank.runner)

    def get(self) -> Any:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(id(loop))
            if entry is None or entry.loop() is not loop:
                self._reap()
                entry = self._clients[id(loop)] = _Entry(loop, self.factory())
                entry.guard = _guard(self._clients, self._lock, id(loop), entry)
                # Started here, in the loop's thread: asyncio's first-iteration hook registers the
                # generator with the loop, which finalises it at shutdown (see the class docstring).
                first: Any = entry.guard.asend(None)
                with contextlib.suppress(StopIteration):
                    first.send(None)
            return entry.client

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
                _drop(entry)

    def close(self) -> None:
        """Blocking :meth:`aclose`; inside a running loop, that loop's client is closed by a task on it."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for entry in self._take_all():
            loop = entry.loop()
            if loop is not None and loop is running:
                _close_soon(entry)
            elif loop is not None and loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_finish(entry), loop)
                with contextlib.suppress(Exception):
                    future.result(self.CLOSE_TIMEOUT)
            else:
                _drop(entry)

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)


async def _guard(
    clients: dict[int, _Entry], lock: threading.RLock, key: int, entry: _Entry
) -> AsyncGenerator[None, None]:
    """Closes ``entry``'s client when its loop finalises async generators (see :class:`ClientPerLoop`).

    A function, not a method: it must not refer to the ``ClientPerLoop``, whose finaliser closes
    the clients it leaves behind."""
    try:
        yield
    finally:
        with lock:
            if clients.get(key) is entry:
                del clients[key]
        loop = entry.loop()
        if loop is not None and not loop.is_closed():
            await _closing(entry)


def _drop_all(clients: dict[int, _Entry], lock: threading.RLock) -> None:
    """The finaliser of a ``ClientPerLoop`` dropped without a close: close what it left open."""
    with lock:
        entries = list(clients.values())
        clients.clear()
    for entry in entries:
        _drop(entry)


_background_tasks: set[asyncio.Task[None]] = set()


async def _close(client: Any) -> None:
    try:
        await client.close()
    except Exception as exc:  # a client that fails to close must not fail the caller's shutdown
        logger.debug("llmrerank: closing an SDK client failed: %s: %s", type(exc).__name__, exc)


def _closing(entry: _Entry) -> asyncio.Future[None]:
    """The close of ``entry``'s client, started on the running loop (its own) on first call: shared
    by :func:`_finish` and the guard, so the client is closed once whichever comes first."""
    if entry.closing is None:
        entry.closing = asyncio.ensure_future(_close(entry.client))
    return entry.closing


async def _finish(entry: _Entry) -> None:
    """Close ``entry``'s client on its own loop, then finish its guard so the loop forgets it.

    The guard stays suspended while the client closes: the loop's ``shutdown_asyncgens()`` may
    finalise it meanwhile (a process exiting right after dropping a backend), and then awaits the
    same close instead of failing with "aclose(): asynchronous generator is already running". The
    close is shielded: a cancelled ``_finish`` leaves it to finish (or to the guard to await)."""
    await asyncio.shield(_closing(entry))
    if entry.guard is not None and not getattr(entry.guard, "ag_running", False):  # (typeshed lacks ag_running)
        await entry.guard.aclose()  # its close is done: this returns without suspending


def _close_soon(entry: _Entry) -> None:
    """Close ``entry``'s client in a task of the running loop (its own)."""
    task = asyncio.get_running_loop().create_task(_finish(entry))
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


def _drop(entry: _Entry) -> None:
    """Close ``entry``'s client on its loop when that loop is not running here and now: in a task
    queued on it (the loop keeps the client reachable until then: see :class:`ClientPerLoop`), or,
    when the loop is closed, by :func:`_abandon`."""
    loop = entry.loop()
    if loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(_close_soon, entry)
            return
        except RuntimeError:  # closed meanwhile
            pass
    _abandon(entry)


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


RETRY_STATUSES = frozenset({408, 409, 429})
"""HTTP statuses a retry may fix, besides every 5xx (500, 502, 503, 504, Anthropic's 529)."""
INITIAL_BACKOFF = 0.5
"""Seconds before the first retry when the server gives no ``retry-after``; doubled each retry."""
MAX_BACKOFF = 8.0
"""The longest backoff between two tries (a ``retry-after`` is honoured as it is)."""
LOCAL_PLACEHOLDER_KEY = "no-key"
"""The API key sent to a server on this machine or a private network when none is given or set in
the environment: such servers are mostly started without one, and the SDKs refuse to run without."""
CHECK_TIMEOUT = 5.0
"""Seconds a server has to answer ``GET /models`` after a call timed out, before a rerank stops
sending it calls (:meth:`SDKBackend.answers`)."""
CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection (at most the call's timeout): an address that drops packets
fails in this time, not after the call's whole timeout."""


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _transport_cause(exc: BaseException) -> str:
    """What the HTTP library said under an SDK connection error (``ConnectError: [Errno 111] ...``)."""
    for cause in _causes(exc)[1:]:
        if type(cause).__module__.startswith(("httpx", "httpcore")):
            return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    return ""


def _not_connected(exc: BaseException) -> bool:
    """Whether the connection could not be made at all (refused, no such host, connect timeout)."""
    return any(type(c).__name__ in ("ConnectError", "ConnectTimeout") for c in _causes(exc))


def retry_wait(exc: BaseException, retries: int, max_retries: int, *, local: bool) -> float | None:
    """Seconds to wait before trying a failed SDK call again, or None: do not retry.

    The one retry rule of the SDK backends (their SDKs never retry by themselves): while fewer than
    ``max_retries`` retries were made, retry what a retry can fix, wherever the server is: 408,
    409, 429 and every 5xx (529 included), unless the server's ``x-should-retry`` says otherwise; a
    connection refused, reset or closed without an answer. A timed-out call is retried only on a
    hosted API: a server you host (:func:`~llmrerank.backends.servers.is_local_url`) keeps working
    on a request the client gave up on, so a retry would double its load (a connection that timed
    out before it was made is retried: nothing was sent). The wait is the answer's ``retry-after``
    (``retry-after-ms``), else exponential backoff from :data:`INITIAL_BACKOFF` to
    :data:`MAX_BACKOFF` with jitter; the caller does not wait past the call's timeout or the
    rerank's deadline (:meth:`SDKBackend._request`).
    """
    if retries >= max_retries:
        return None
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None)
    headers = getattr(response, "headers", None)
    if status is not None:
        should = headers.get("x-should-retry") if headers is not None else None
        if should == "false" or (should != "true" and status not in RETRY_STATUSES and status < 500):
            return None
        wait = retry_after(headers)
        if wait is not None:
            return wait
    else:
        names = {k.__name__ for k in type(exc).__mro__}
        if "APIConnectionError" not in names:  # the SDK's transport errors, its timeouts included
            return None
        if local and "APITimeoutError" in names and not _not_connected(exc):
            return None
    return min(INITIAL_BACKOFF * 2.0**retries, MAX_BACKOFF) * (1 - 0.25 * random.random())


class SDKBackend(Backend):
    """A backend over an official async SDK client (``openai.AsyncOpenAI``, ``anthropic.AsyncAnthropic``).

    Subclasses name the SDK's async client and base error classes, pass the imported SDK module to
    ``__init__``, and implement :meth:`generate` with :meth:`_current_client`, turning the SDK's
    exceptions into typed errors with :meth:`_error`. ``timeout`` bounds each call, retries
    included; ``max_retries`` is how many retries :meth:`_request` makes, by the rule of
    :func:`retry_wait` (the SDK's own retries are off).
    """

    client_class: str
    """Name of the SDK's async client class (``AsyncOpenAI``)."""
    error_class: str
    """Name of the SDK's base exception class (``OpenAIError``)."""
    title: str
    """The provider's name in messages (``OpenAI``)."""
    base_url_env: str
    """The environment variable the SDK reads the base URL from when none is given."""
    api_key_env: str
    """The environment variable the SDK reads the API key from when none is given."""

    def __init__(
        self,
        sdk: Any,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: Any = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        temperature: float | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._sdk = sdk
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        given = str(getattr(client, "base_url", "") or "") if client is not None else ""
        self.server_url: str | None = given or base_url or os.environ.get(self.base_url_env) or None
        """The server's base URL as the SDK will resolve it (None: the provider's own API)."""
        # Left out, they depend on the server (call_defaults): a local one gets a longer timeout.
        self.timeout, self.max_retries = call_defaults(self.server_url, timeout, max_retries)
        self.temperature = temperature
        self.default_headers = dict(default_headers) if default_headers else None
        self._client = client
        self._clients = ClientPerLoop(self._make_client)
        self.answered = False
        """Whether any call of this backend has had an HTTP answer (an error status counts): until
        then a failure to connect raises :class:`~llmrerank.errors.ServerUnreachableError`."""

    def _make_client(self) -> Any:
        api_key = self.api_key
        if api_key is None and not os.environ.get(self.api_key_env) and is_local_url(self.server_url):
            api_key = LOCAL_PLACEHOLDER_KEY  # a server you host needs none, the SDK insists on one
        try:
            return getattr(self._sdk, self.client_class)(
                api_key=api_key,
                base_url=self.base_url,
                # A connection that cannot be made fails within CONNECT_TIMEOUT, not the call's timeout.
                timeout=self._sdk.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
                max_retries=0,  # llmrerank retries (SDKBackend._request), by the rule of retry_wait
                default_headers=self.default_headers,
                # The SDK's own HTTP client, with hooks that let the adaptive limiter see every 429.
                http_client=self._sdk.DefaultAsyncHttpxClient(
                    event_hooks={"request": [on_request], "response": [on_response]}
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
        if self._client is not None:
            # A client you pass keeps its settings but not its retries: llmrerank retries (see _request).
            return self._client.with_options(max_retries=0)
        return self._clients.get()

    async def _request(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await the SDK call ``call()`` makes, retried by the rule of :func:`retry_wait`, for at most
        :attr:`timeout` seconds in all; its errors become typed llmrerank errors.

        The SDK's own timeout bounds each network operation (a server dripping bytes passes it); this
        bounds the whole call, retries and their waits included. A wait (``retry-after`` or backoff)
        that would end past the call's time or the rerank's deadline is not waited for: the call
        fails at once (a :class:`~llmrerank.errors.RateLimitError` carries its ``retry_after``).
        """
        ends = time.monotonic() + self.timeout
        deadline = RERANK_ENDS.get()
        limit = ends if deadline is None else min(ends, deadline)
        retries = 0
        while True:
            try:
                result = await asyncio.wait_for(call(), max(ends - time.monotonic(), 0.0))
                self.answered = True
                return result
            except asyncio.TimeoutError:
                raise BackendTimeoutError(
                    f"no complete answer within timeout={self.timeout}s from {self._where()}", backend=self.name
                ) from None
            except self.sdk_error as exc:
                if getattr(exc, "status_code", None) is not None:
                    self.answered = True  # an HTTP answer, if an error: the server is there
                error = self._error(exc)
                wait = retry_wait(exc, retries, self.max_retries, local=is_local_url(self.server_url))
                if wait is None or time.monotonic() + wait > limit:
                    raise error from exc
            except ConfigurationError:
                raise  # no client could be made (no API key)
            except ValueError as exc:  # a body the SDK could not decode
                raise InvalidResponseError(f"invalid response: {exc}", backend=self.name) from exc
            except TypeError as exc:
                # The Anthropic SDK finds out at request time that it has no credentials at all.
                if "authentication" in str(exc).lower():
                    raise ConfigurationError(f"no {self.title} credentials: {exc}") from exc
                raise
            logger.debug("llmrerank: retrying a call to %s in %.2fs after %s", self._where(), wait, error)
            retries += 1
            await asyncio.sleep(wait)

    async def answers(self) -> bool | None:
        """Whether the server answers ``GET /models`` (any HTTP status counts) within
        :data:`CHECK_TIMEOUT` seconds (or the call timeout, when shorter): a server that stopped
        answering (llama-server after SIGTERM keeps its connections open, silent) does not."""
        timeout = min(CHECK_TIMEOUT, self.timeout)
        try:
            await asyncio.wait_for(self._current_client().models.list(timeout=timeout), timeout)
        except asyncio.TimeoutError:
            return False
        except self.sdk_error as exc:
            return getattr(exc, "status_code", None) is not None
        except Exception as exc:  # the check is advice: it never fails the rerank
            logger.debug("llmrerank: checking %s failed: %s: %s", self._where(), type(exc).__name__, exc)
            return None
        return True

    def _where(self) -> str:
        """The server's address, for messages."""
        return self.server_url or f"{self.title}'s API"

    def _is_rate_limit(self, exc: Exception) -> bool:
        """Whether ``exc`` asks the caller to slow down (the SDK's RateLimitError; subclasses add more)."""
        return isinstance(exc, self._sdk.RateLimitError)

    def _error(self, exc: Exception) -> BackendError:
        """The typed llmrerank error for an SDK exception (see :func:`~llmrerank.errors.error_from_status`).

        Errors without an HTTP answer name the server's address. While no call of this backend has
        had an answer (:attr:`answered`), a failure to connect is a
        :class:`~llmrerank.errors.ServerUnreachableError`: a wrong ``base_url`` must not pass for a
        reranker that keeps the input order."""
        status = getattr(exc, "status_code", None)
        message = f"{type(exc).__name__}: {exc}"
        if self._is_rate_limit(exc):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return RateLimitError(message, status_code=status, backend=self.name, retry_after=retry_after(headers))
        if status is None and isinstance(exc, self._sdk.APIConnectionError):  # timeouts included
            cause = _transport_cause(exc)
            detail = f"{message} ({self._where()}: {cause})" if cause else f"{message} ({self._where()})"
            if not self.answered and _not_connected(exc):
                return ServerUnreachableError(
                    f"cannot connect to {self._where()}, which has not answered any call yet: check that "
                    f"the server is running and that base_url is right [{detail}]",
                    backend=self.name,
                    url=self._where(),
                )
            if isinstance(exc, self._sdk.APITimeoutError):
                return BackendTimeoutError(detail, backend=self.name)
            return BackendError(detail, backend=self.name)
        return error_from_status(status, message, backend=self.name)

    async def aclose(self) -> None:
        """Close the clients this backend made, on every event loop (a ``client`` you passed in stays open).

        The backend stays usable: the next call makes a new client.
        """
        await self._clients.aclose()

    def close(self) -> None:
        """Blocking :meth:`aclose`; safe from plain code, threads and running event loops."""
        self._clients.close()


__all__ = ["ClientOptions", "ClientPerLoop", "SDKBackend", "retry_after", "retry_wait"]
