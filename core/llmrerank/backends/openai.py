"""OpenAI chat completions backend; works with any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

The ``openai`` SDK is imported when a backend is created, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import BackendError, BackendTimeoutError, ConfigurationError, RateLimitError, require
from .base import Backend, Completion, Prompt, counts_for_choice

TOP_LOGPROBS = 20
"""How many first-token alternatives are asked for (the OpenAI maximum)."""


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


def choice_logprobs(top: Sequence[tuple[str, float]], choices: Sequence[str]) -> dict[str, float]:
    """log P(answer starts with choice) from first-token ``(token, logprob)`` pairs.

    A token counts for a choice by :func:`~llmrerank.backends.base.counts_for_choice` on the
    stripped, lower-cased texts, so ``" Yes"`` and ``"yes"`` both count for ``Yes`` and ``"10"``
    counts for ``"1"`` as well as ``"10"`` (the meaning of
    :attr:`~llmrerank.backends.base.Completion.choice_logprobs`); several tokens are combined with
    logsumexp. Choices no token matched are absent.
    """
    keys = [(c, c.strip().lower()) for c in choices]
    found: dict[str, list[float]] = {}
    for token, logprob in top:
        text = token.strip().lower()
        for choice, key in keys:
            if counts_for_choice(text, key):
                found.setdefault(choice, []).append(logprob)
    return {choice: _logsumexp(values) for choice, values in found.items()}


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


class OpenAIBackend(Backend):
    """Chat completions through the official ``openai`` SDK (``pip install "llmrerank[openai]"``).

    With no ``api_key`` / ``base_url`` the SDK reads ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.
    Point ``base_url`` at any OpenAI-compatible server (``http://localhost:8000/v1`` for vLLM).
    ``client`` is an ``openai.AsyncOpenAI`` used as is (and not closed by :meth:`aclose`);
    otherwise one client is made per event loop. ``timeout`` (seconds per call) and ``max_retries``
    go to the SDK, which does the retrying. ``temperature`` None leaves it out of the request.

    ``logprobs`` (None means True) sets :attr:`supports_logprobs`: OpenAI and vLLM return token
    log-probs, so prompts with ``choices`` are asked for one token plus its top alternatives.
    Ollama and llama.cpp servers may not support them; pass ``logprobs=False`` there (a reply
    without log-probs still gives text).
    """

    name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: Any = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        temperature: float | None = 0.0,
        logprobs: bool | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._sdk: Any = require("openai", "openai")
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.supports_logprobs = True if logprobs is None else logprobs
        self.default_headers = dict(default_headers) if default_headers else None
        self._client = client
        self._clients = ClientPerLoop(self._make_client)

    def _make_client(self) -> Any:
        try:
            return self._sdk.AsyncOpenAI(
                api_key=self.api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
                default_headers=self.default_headers,
            )
        except self._sdk.OpenAIError as exc:  # e.g. no API key anywhere
            raise ConfigurationError(f"cannot create the OpenAI client: {exc}") from exc

    def _current_client(self) -> Any:
        return self._client if self._client is not None else self._clients.get()

    async def generate(self, prompt: Prompt) -> Completion:
        """One chat completion; with ``prompt.choices`` and log-probs, also the choices' log-probs."""
        messages = [{"role": "user", "content": prompt.user}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": prompt.system})
        options: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": prompt.max_tokens}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        want_logprobs = bool(prompt.choices) and self.supports_logprobs
        if want_logprobs:
            options.update(logprobs=True, top_logprobs=TOP_LOGPROBS, max_tokens=1)
        try:
            response = await self._current_client().chat.completions.create(**options)
        except self._sdk.OpenAIError as exc:
            raise self._error(exc) from exc
        except ValueError as exc:  # a body the SDK could not decode
            raise BackendError(f"invalid response: {exc}", backend=self.name) from exc

        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        choices = getattr(response, "choices", None)
        if not choices:
            return Completion(text="", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        first = choices[0]
        text = getattr(getattr(first, "message", None), "content", None) or ""
        lp = None
        if want_logprobs and prompt.choices:
            content = getattr(getattr(first, "logprobs", None), "content", None)
            if content:
                top = [(t.token, t.logprob) for t in (content[0].top_logprobs or ())]
                if not top:
                    top = [(content[0].token, content[0].logprob)]
                lp = choice_logprobs(top, prompt.choices)
        return Completion(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, choice_logprobs=lp
        )

    def _error(self, exc: Exception) -> BackendError:
        sdk = self._sdk
        status = getattr(exc, "status_code", None)
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, sdk.RateLimitError):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return RateLimitError(message, status_code=status, backend=self.name, retry_after=retry_after(headers))
        if isinstance(exc, sdk.APITimeoutError):
            return BackendTimeoutError(message, backend=self.name)
        return BackendError(message, status_code=status, backend=self.name)

    async def aclose(self) -> None:
        """Close the client this event loop made (a ``client`` you passed in stays open)."""
        await self._clients.aclose()


__all__ = ["TOP_LOGPROBS", "ClientPerLoop", "OpenAIBackend", "choice_logprobs", "retry_after"]
