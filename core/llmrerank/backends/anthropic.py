"""Anthropic Messages API backend.

The ``anthropic`` SDK is imported when a backend is created, so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidResponseError, require
from .base import Completion, Prompt
from .sdk import SDKBackend, describe

OVERLOADED = 529
"""Anthropic's "overloaded" status, reported as :class:`~llmrerank.errors.RateLimitError`."""


class AnthropicBackend(SDKBackend):
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
    client_class = "AsyncAnthropic"
    error_class = "AnthropicError"
    title = "Anthropic"
    base_url_env = "ANTHROPIC_BASE_URL"
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
        super().__init__(
            require("anthropic", "anthropic"),
            model,
            api_key=api_key,
            base_url=base_url,
            client=client,
            timeout=timeout,
            max_retries=max_retries,
            temperature=temperature,
            default_headers=default_headers,
        )

    async def generate(self, prompt: Prompt) -> Completion:
        """One message; the text is the concatenation of the reply's text blocks."""
        message = await self._request(self._current_client().messages.create(**self.request_options(prompt)))
        return self.completion_from(message, prompt)

    def request_options(self, prompt: Prompt) -> dict[str, Any]:
        """The ``messages.create`` arguments for ``prompt`` (merge ``extra_body`` in for a Message Batches request)."""
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
        return options

    def completion_from(self, message: Any, prompt: Prompt) -> Completion:
        """The :class:`Completion` in a Messages API response (an SDK object) to ``prompt``.

        Raises :class:`~llmrerank.errors.InvalidResponseError` when it is not a message.
        """
        blocks = getattr(message, "content", None)
        if not isinstance(blocks, list):
            raise InvalidResponseError(
                f"the server answered with {describe(message)} instead of a message", backend=self.name
            )
        text = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", None) == "text")
        usage = getattr(message, "usage", None)
        prompt_tokens = sum(
            int(getattr(usage, name, 0) or 0)
            for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            finish_reason=getattr(message, "stop_reason", None),
        )

    def _is_rate_limit(self, exc: Exception) -> bool:
        """429, and 529 "overloaded" too: both ask the caller to slow down."""
        return super()._is_rate_limit(exc) or getattr(exc, "status_code", None) == OVERLOADED


__all__ = ["OVERLOADED", "AnthropicBackend"]
