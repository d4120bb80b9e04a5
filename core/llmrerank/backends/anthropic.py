"""Anthropic Messages API backend.

The ``anthropic`` SDK is imported when a backend is created, so this module imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, InvalidResponseError, require
from ..protocol import Completion, Prompt
from .base import token_count
from .sdk import ClientOptions, SDKBackend, describe

if TYPE_CHECKING:
    from typing_extensions import Unpack

OVERLOADED = 529
"""Anthropic's "overloaded" status, reported as :class:`~llmrerank.errors.RateLimitError`."""

THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
"""Extended-thinking ``budget_tokens`` for each ``reasoning_effort``."""
MIN_THINKING_BUDGET = 1024
"""The smallest ``budget_tokens`` the Messages API accepts."""


CACHE_MINIMUMS = (("haiku-4", 4096), ("opus-4-5", 4096), ("opus-4-6", 4096), ("sonnet-4-6", 2048), ("haiku", 2048))
"""Shortest prompt prefix (tokens) each model family caches, by a part of its name, as Anthropic
documents it; other models: 1024."""

CHARS_PER_TOKEN = 3.5
"""A rough count of characters per Claude token, to judge whether a prefix is long enough to cache."""


def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix, in tokens, that ``model`` caches (a shorter marked prefix is not cached)."""
    name = model.lower()
    return next((tokens for part, tokens in CACHE_MINIMUMS if part in name), 1024)


class AnthropicBackend(SDKBackend):
    """Claude through the official ``anthropic`` SDK (``pip install "llmrerank[anthropic]"``).

    With no ``api_key`` / ``base_url`` the SDK reads ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``.
    ``base_url`` has no ``/v1``: the SDK appends ``/v1/messages``. ``client`` is an
    ``anthropic.AsyncAnthropic`` used as is (and not closed by :meth:`aclose`); otherwise one
    client is made per event loop. ``timeout`` (seconds per call, retries included) and
    ``max_retries`` (retries per call, by the rule of :func:`~llmrerank.backends.sdk.retry_wait`;
    the SDK itself never retries) are picked by server when None, as for
    :class:`~llmrerank.backends.openai.OpenAIBackend`. ``temperature`` is not sent by default: the
    API version that ``anthropic>=2`` sends (``2026-10-21``) rejects sampling parameters with a
    400; set it only for servers that accept it.
    The Messages API has no token log-probs, so ``supports_logprobs`` is False.

    ``prompt_cache`` (default True) marks the system prompt for Anthropic's prompt cache
    (``cache_control``, ephemeral) when it is long enough for the model to cache it (1024 to 4096
    tokens: :func:`min_cacheable_tokens`; a long domain instruction or your own system prompt):
    every call of every rerank starts with it, and reads of it are billed at a tenth
    (``usage.cached_prompt_tokens``). The built-in system prompt alone is too short to be cached.

    Extended thinking: ``reasoning_effort`` (``"low"`` 1,024 thinking tokens, ``"medium"`` 4,096,
    ``"high"`` 16,384) or ``reasoning_budget`` (tokens, at least 1,024) sends
    ``thinking={"type": "enabled", "budget_tokens": ...}`` and raises each answer's ``max_tokens``
    by the budget, so the thinking leaves room for the answer. Thinking blocks are never read as
    the answer; their tokens are part of ``output_tokens``, and counted as reasoning tokens where
    the API reports them (``usage.output_tokens_details.thinking_tokens``).
    """

    name = "anthropic"
    client_class = "AsyncAnthropic"
    error_class = "AnthropicError"
    title = "Anthropic"
    base_url_env = "ANTHROPIC_BASE_URL"
    api_key_env = "ANTHROPIC_API_KEY"
    supports_logprobs = False

    def __init__(
        self,
        model: str = "claude-haiku-4-5",
        *,
        prompt_cache: bool = True,
        reasoning_effort: str | None = None,
        reasoning_budget: int | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        if reasoning_effort is not None and reasoning_effort not in THINKING_BUDGETS:
            choices = sorted(THINKING_BUDGETS)
            raise ConfigurationError(f"reasoning_effort must be one of {choices}, got {reasoning_effort!r}")
        budget = reasoning_budget
        if budget is None and reasoning_effort is not None:
            budget = THINKING_BUDGETS[reasoning_effort]
        if budget is not None and budget < MIN_THINKING_BUDGET:
            raise ConfigurationError(f"reasoning_budget must be >= {MIN_THINKING_BUDGET} tokens (the API's minimum)")
        if budget is not None and options.get("temperature") is not None:
            raise ConfigurationError("extended thinking takes no temperature: leave temperature=None")
        super().__init__(require("anthropic", "anthropic"), model, **options)
        self.prompt_cache = prompt_cache
        self.reasoning_effort = reasoning_effort
        self.reasoning_budget = budget
        """Extended-thinking budget in tokens; None: no thinking."""
        self.answer_reserve = budget or 0

    async def generate(self, prompt: Prompt) -> Completion:
        """One message; the answer is the reply's text blocks joined (thinking blocks are not the answer)."""
        message = await self._request(lambda: self._current_client().messages.create(**self.request_options(prompt)))
        return self.completion_from(message, prompt)

    def request_options(self, prompt: Prompt) -> dict[str, Any]:
        """The ``messages.create`` arguments for ``prompt`` (merge ``extra_body`` in for a Message Batches request)."""
        options: dict[str, Any] = {
            "model": self.model,
            "max_tokens": prompt.max_tokens + self.answer_reserve,  # the thinking room prompt_room() keeps free
            "messages": [{"role": "user", "content": prompt.user}],
        }
        if prompt.system:
            options["system"] = self.system_blocks(prompt.system)
        if self.reasoning_budget is not None:
            options["thinking"] = {"type": "enabled", "budget_tokens": self.reasoning_budget}
        if self.temperature is not None:
            # anthropic>=2 dropped sampling parameters from messages.create(); older API versions
            # and compatible servers still read the body field.
            options["extra_body"] = {"temperature": self.temperature}
        return options

    def completion_from(self, message: Any, prompt: Prompt) -> Completion:
        """The :class:`Completion` in a Messages API response (an SDK object) to ``prompt``.

        Raises :class:`~llmrerank.errors.InvalidResponseError` when it is not a message or has no
        content block at all. Token counts that are not whole numbers >= 0 count as unknown.
        """
        blocks = getattr(message, "content", None)
        if not isinstance(blocks, list):
            raise InvalidResponseError(
                f"the server answered with {describe(message)} instead of a message", backend=self.name
            )
        if not blocks:
            # No block at all, not even thinking: a failed call, never an empty answer to cache.
            stop = getattr(message, "stop_reason", None)
            raise InvalidResponseError(f"the message has no content (stop_reason {stop!r})", backend=self.name)
        text = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", None) == "text")
        usage = getattr(message, "usage", None)
        prompt_tokens = sum(
            token_count(getattr(usage, name, 0))
            for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        model = getattr(message, "model", None)
        details = getattr(usage, "output_tokens_details", None)
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=token_count(getattr(usage, "output_tokens", 0)),
            finish_reason=getattr(message, "stop_reason", None),
            cached_prompt_tokens=token_count(getattr(usage, "cache_read_input_tokens", 0)),
            model=model if isinstance(model, str) and model else None,
            reasoning_tokens=token_count(getattr(details, "thinking_tokens", 0)),
        )

    def system_blocks(self, system: str) -> str | list[dict[str, Any]]:
        """The system prompt as sent: one text block marked ``cache_control`` (ephemeral) when
        ``prompt_cache`` is on and it is long enough for the model to cache (see
        :func:`min_cacheable_tokens`), else the plain string."""
        if not self.prompt_cache or len(system) / CHARS_PER_TOKEN < min_cacheable_tokens(self.model):
            return system
        return [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]

    def cache_identity(self) -> dict[str, object]:
        """Base URL, temperature and the extended-thinking budget."""
        identity = super().cache_identity()
        if self.reasoning_budget is not None:
            identity["thinking_budget"] = self.reasoning_budget
        return identity

    def _is_rate_limit(self, exc: Exception) -> bool:
        """429, and 529 "overloaded" too: both ask the caller to slow down."""
        return super()._is_rate_limit(exc) or getattr(exc, "status_code", None) == OVERLOADED


__all__ = ["MIN_THINKING_BUDGET", "OVERLOADED", "THINKING_BUDGETS", "AnthropicBackend", "min_cacheable_tokens"]
