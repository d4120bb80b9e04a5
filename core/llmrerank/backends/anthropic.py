"""Anthropic Messages API backend.

The ``anthropic`` SDK is imported when a backend is created, so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BackendError, BackendTimeoutError, ConfigurationError, RateLimitError, require
from .base import Backend, Completion, Prompt
from .openai import ClientPerLoop, retry_after

OVERLOADED = 529
"""Anthropic's "overloaded" status, reported as :class:`~llmrerank.errors.RateLimitError`."""


class AnthropicBackend(Backend):
    """Claude through the official ``anthropic`` SDK (``pip install "llmrerank[anthropic]"``).

    With no ``api_key`` / ``base_url`` the SDK reads ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``.
    ``base_url`` has no ``/v1``: the SDK appends ``/v1/messages``. ``client`` is an
    ``anthropic.AsyncAnthropic`` used as is (and not closed by :meth:`aclose`); otherwise one
    client is made per event loop. ``timeout`` (seconds per call) and ``max_retries`` go to the
    SDK, which does the retrying. ``temperature`` is not sent by default: the API version that
    ``anthropic>=2`` sends (``2026-10-21``) rejects sampling parameters with a 400; set it only
    for servers that accept it.
    The Messages API has no token log-probs, so ``supports_logprobs`` is False.
    """

    name = "anthropic"
    supports_logprobs = False

    def __init__(
        self,
        model: str = "claude-haiku-4-5",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: Any = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        temperature: float | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._sdk: Any = require("anthropic", "anthropic")
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
            return self._sdk.AsyncAnthropic(
                api_key=self.api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
                default_headers=self.default_headers,
            )
        except (self._sdk.AnthropicError, ValueError) as exc:
            raise ConfigurationError(f"cannot create the Anthropic client: {exc}") from exc

    def _current_client(self) -> Any:
        return self._client if self._client is not None else self._clients.get()

    async def generate(self, prompt: Prompt) -> Completion:
        """One message; the text is the concatenation of the reply's text blocks."""
        options: dict[str, Any] = {
            "model": self.model,
            "max_tokens": prompt.max_tokens,
            "messages": [{"role": "user", "content": prompt.user}],
        }
        if prompt.system:
            options["system"] = prompt.system
        if self.temperature is not None:
            # anthropic>=2 dropped sampling parameters from messages.create(); older API versions
            # and compatible servers still read the body field.
            options["extra_body"] = {"temperature": self.temperature}
        try:
            message = await self._current_client().messages.create(**options)
        except self._sdk.AnthropicError as exc:
            raise self._error(exc) from exc
        except ValueError as exc:  # a body the SDK could not decode
            raise BackendError(f"invalid response: {exc}", backend=self.name) from exc

        blocks = getattr(message, "content", None) or ()
        text = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", None) == "text")
        usage = getattr(message, "usage", None)
        prompt_tokens = sum(
            int(getattr(usage, name, 0) or 0)
            for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        return Completion(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=int(getattr(usage, "output_tokens", 0) or 0)
        )

    def _error(self, exc: Exception) -> BackendError:
        sdk = self._sdk
        status = getattr(exc, "status_code", None)
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, sdk.RateLimitError) or status == OVERLOADED:
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return RateLimitError(message, status_code=status, backend=self.name, retry_after=retry_after(headers))
        if isinstance(exc, sdk.APITimeoutError):
            return BackendTimeoutError(message, backend=self.name)
        return BackendError(message, status_code=status, backend=self.name)

    async def aclose(self) -> None:
        """Close the client this event loop made (a ``client`` you passed in stays open)."""
        await self._clients.aclose()


__all__ = ["OVERLOADED", "AnthropicBackend"]
