"""What the SDK-based backends (OpenAI, Anthropic) share: client per event loop, settings, error mapping.

The SDKs are imported by the backends themselves when one is created.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ..adaptive import on_request, on_response
from ..errors import (
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    InvalidResponseError,
    RateLimitError,
    error_from_status,
)
from .base import Backend

T = TypeVar("T")


class ClientPerLoop:
    """One SDK client per running event loop, created on first use by ``factory``.

    httpx async clients must not be shared across event loops, and the blocking API of llmrerank
    runs every call in a fresh ``asyncio.run``; clients of loops that have closed are dropped.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self._clients: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], Any]] = {}
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._drop_dead()
            entry = self._clients.get(id(loop))
            if entry is None:
                entry = (weakref.ref(loop), self.factory())
                self._clients[id(loop)] = entry
            return entry[1]

    async def aclose(self) -> None:
        """Close the running loop's client, if one was made."""
        with self._lock:
            entry = self._clients.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].close()

    def _drop_dead(self) -> None:
        # A closed loop cannot run the client's close(); its sockets go with the garbage.
        for key, (ref, _) in list(self._clients.items()):
            loop = ref()
            if loop is None or loop.is_closed():
                del self._clients[key]


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date), if present."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    date = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(date) if date else None
    return max(email.utils.mktime_tz(parsed) - time.time(), 0.0) if parsed else None


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

    def __init__(
        self,
        sdk: Any,
        model: str,
        *,
        api_key: str | None,
        base_url: str | None,
        client: Any,
        timeout: float,
        max_retries: int,
        temperature: float | None,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        self._sdk = sdk
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
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
                # The SDK's own HTTP client, with hooks that let the adaptive limiter see every 429,
                # the ones the SDK retries included (llmrerank.adaptive).
                http_client=self._sdk.DefaultAsyncHttpxClient(
                    event_hooks={"request": [on_request], "response": [on_response]}
                ),
            )
        except (self.sdk_error, ValueError) as exc:  # e.g. no API key anywhere
            raise ConfigurationError(f"cannot create the {self.title} client: {exc}") from exc

    @property
    def sdk_error(self) -> type[Exception]:
        """The SDK's base exception class: what :meth:`generate` turns into a typed error."""
        error: type[Exception] = getattr(self._sdk, self.error_class)
        return error

    def _current_client(self) -> Any:
        return self._client if self._client is not None else self._clients.get()

    async def _request(self, call: Awaitable[T]) -> T:
        """Await an SDK call; its errors become typed llmrerank errors."""
        try:
            return await call
        except self.sdk_error as exc:
            raise self._error(exc) from exc
        except ValueError as exc:  # a body the SDK could not decode
            raise InvalidResponseError(f"invalid response: {exc}", backend=self.name) from exc
        except TypeError as exc:
            # The Anthropic SDK finds out at request time that it has no credentials at all.
            if "authentication" in str(exc).lower():
                raise ConfigurationError(f"no {self.title} credentials: {exc}") from exc
            raise

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
        """Close the client this event loop made (a ``client`` you passed in stays open)."""
        await self._clients.aclose()


__all__ = ["ClientPerLoop", "SDKBackend", "retry_after"]
