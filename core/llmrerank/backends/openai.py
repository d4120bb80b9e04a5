"""OpenAI chat completions backend; works with any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

The ``openai`` SDK is imported when a backend is created, so this module imports without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import require
from .base import Completion, Prompt, counts_for_choice
from .sdk import SDKBackend

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
        messages = [{"role": "user", "content": prompt.user}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": prompt.system})
        options: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": prompt.max_tokens}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        want_logprobs = bool(prompt.choices) and self.supports_logprobs
        if want_logprobs:
            options.update(logprobs=True, top_logprobs=TOP_LOGPROBS, max_tokens=1)
        response = await self._request(self._current_client().chat.completions.create(**options))

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


__all__ = ["TOP_LOGPROBS", "OpenAIBackend", "choice_logprobs"]
