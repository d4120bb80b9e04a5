"""OpenAI chat completions backend; works with any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

The ``openai`` SDK is imported when a backend is created, so this module imports without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidResponseError, require
from .base import Completion, Prompt, counts_for_choice
from .sdk import SDKBackend, describe

TOP_LOGPROBS = 20
"""How many first-token alternatives are asked for (the OpenAI maximum)."""


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


class OpenAIBackend(SDKBackend):
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
    client_class = "AsyncOpenAI"
    error_class = "OpenAIError"
    title = "OpenAI"
    base_url_env = "OPENAI_BASE_URL"

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
        super().__init__(
            require("openai", "openai"),
            model,
            api_key=api_key,
            base_url=base_url,
            client=client,
            timeout=timeout,
            max_retries=max_retries,
            temperature=temperature,
            default_headers=default_headers,
        )
        self.supports_logprobs = True if logprobs is None else logprobs

    def cache_identity(self) -> dict[str, object]:
        """Base URL, temperature, and whether log-probs are asked for."""
        return {**super().cache_identity(), "logprobs": self.supports_logprobs}

    async def generate(self, prompt: Prompt) -> Completion:
        """One chat completion; with ``prompt.choices`` and log-probs, also the choices' log-probs."""
        response = await self._request(self._current_client().chat.completions.create(**self.request_options(prompt)))
        return self.completion_from(response, prompt)

    def _wants_logprobs(self, prompt: Prompt) -> bool:
        return bool(prompt.choices) and self.supports_logprobs

    def request_options(self, prompt: Prompt) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for ``prompt`` (also the body of a Batch API request)."""
        messages = [{"role": "user", "content": prompt.user}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": prompt.system})
        options: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": prompt.max_tokens}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self._wants_logprobs(prompt):
            options.update(logprobs=True, top_logprobs=TOP_LOGPROBS, max_tokens=1)
        return options

    def completion_from(self, response: Any, prompt: Prompt) -> Completion:
        """The :class:`Completion` in a chat completion response (an SDK object) to ``prompt``.

        Raises :class:`~llmrerank.errors.InvalidResponseError` when it is not one (no choices, an
        HTML page, a JSON array) or its content is neither text nor text parts.
        """
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise InvalidResponseError(
                f"the server answered with {describe(response)} instead of a chat completion", backend=self.name
            )
        first = choices[0]
        message = getattr(first, "message", None)
        if message is None:
            raise InvalidResponseError("the chat completion's first choice has no message", backend=self.name)
        text = message_text(getattr(message, "content", None), self.name)
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cached_tokens = int(getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0)
        lp = None
        if self._wants_logprobs(prompt) and prompt.choices:
            content = getattr(getattr(first, "logprobs", None), "content", None)
            if content:
                top = [(t.token, t.logprob) for t in (content[0].top_logprobs or ())]
                if not top:
                    top = [(content[0].token, content[0].logprob)]
                lp = choice_logprobs(top, prompt.choices)
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            choice_logprobs=lp,
            finish_reason=getattr(first, "finish_reason", None),
            cached_prompt_tokens=cached_tokens,
        )


def message_text(content: Any, backend: str = "openai") -> str:
    """The text of a chat message's ``content``: a string, None (no text), or a list of text parts
    (``{"type": "text", "text": ...}``, as several gateways send), joined. Anything else raises
    :class:`~llmrerank.errors.InvalidResponseError`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            text = part if isinstance(part, str) else _part_text(part)
            if text is None:
                raise InvalidResponseError(f"a content part that is not text: {str(part)[:80]!r}", backend=backend)
            texts.append(text)
        return "".join(texts)
    raise InvalidResponseError(f"message content is {type(content).__name__}, not text", backend=backend)


def _part_text(part: Any) -> str | None:
    get = part.get if isinstance(part, dict) else lambda key: getattr(part, key, None)
    kind, text = get("type"), get("text")
    if kind in ("text", "output_text", None) and isinstance(text, str):
        return text
    if kind in ("reasoning", "thinking", "refusal"):
        return ""  # not the answer
    return None


__all__ = ["TOP_LOGPROBS", "OpenAIBackend", "choice_logprobs", "message_text"]
