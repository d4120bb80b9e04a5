"""OpenAI chat completions backend; works with any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

The ``openai`` SDK is imported when a backend is created, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..errors import BadRequestError, ConfigurationError, InvalidResponseError, require
from ..protocol import Completion, LogLikelihood, Prompt
from .base import counts_for_choice, token_count
from .sdk import ClientOptions, SDKBackend, describe
from .servers import (
    count_tokens,
    discover_context,
    is_openai_api,
    is_openai_reasoning_model,
    is_reasoning_model,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

TOP_LOGPROBS = 20
"""How many alternatives per output token are asked for (the OpenAI maximum)."""
REASONING_BUDGET = 4096
"""Default completion tokens a reasoning model may think with, on top of each answer's budget."""

Position = tuple[str, float, Sequence[tuple[str, float]]]
"""One output token of a reply: the sampled token, its log-prob, and the top ``(token, logprob)`` alternatives."""


def choice_logprobs(top: Sequence[tuple[str, float]], choices: Sequence[str]) -> dict[str, float]:
    """log P(answer starts with choice) from first-token ``(token, logprob)`` pairs.

    A token counts for a choice by :func:`~llmrerank.backends.base.counts_for_choice` on the
    stripped, lower-cased texts, so ``" Yes"`` and ``"yes"`` both count for ``Yes`` and ``"10"``
    counts for ``"1"`` as well as ``"10"`` (the meaning of
    :attr:`~llmrerank.protocol.Completion.choice_logprobs`); several tokens are combined with
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


def echoed_likelihood(response: Any, prompt: str, continuation: str, backend: str = "openai") -> LogLikelihood:
    """log P(continuation | the rest of ``prompt``) from a ``/v1/completions`` response with ``echo``.

    The prompt's tokens are the first ``usage.prompt_tokens`` entries of ``choices[0].logprobs``
    (any generated token after them is ignored); the continuation is the shortest run of final
    prompt tokens whose text covers it (a token straddling the boundary counts in full). Raises
    :class:`~llmrerank.errors.BadRequestError` (permanent) when the server did not echo the prompt
    with its log-probs, as llama.cpp's server does not: such a server cannot score text.
    """
    choices = getattr(response, "choices", None) or ()
    first = choices[0] if choices else None
    text = getattr(first, "text", None) or ""
    logprobs = getattr(first, "logprobs", None)
    tokens = list(getattr(logprobs, "tokens", None) or ())
    values = list(getattr(logprobs, "token_logprobs", None) or ())
    if not text.startswith(prompt) or not tokens or len(tokens) != len(values):
        raise BadRequestError(
            "the server did not echo the prompt with its token log-probs (/v1/completions with echo=True, "
            "logprobs=1): it cannot score text (llama.cpp's server, for one, returns generated tokens only)",
            backend=backend,
        )
    usage = getattr(response, "usage", None)
    prompt_tokens = token_count(getattr(usage, "prompt_tokens", 0))
    if 0 < prompt_tokens < len(tokens):
        tokens, values = tokens[:prompt_tokens], values[:prompt_tokens]
    covered, start = 0, len(tokens)
    while covered < len(continuation) and start > 0:
        start -= 1
        covered += len(tokens[start])
    picked = values[start:]
    if covered < len(continuation) or not picked or any(v is None for v in picked):
        raise InvalidResponseError("the echoed log-probs do not cover the continuation", backend=backend)
    return LogLikelihood(float(sum(picked)), len(picked), prompt_tokens or len(tokens))


def chained_logprobs(positions: Sequence[Position], choices: Sequence[str]) -> tuple[dict[str, float], tuple[str, ...]]:
    """log P(answer starts with choice) over the answer's first two tokens, and the choices left unresolved.

    The first position gives :func:`choice_logprobs`. A choice that a tokenizer writes in two
    tokens (``"10"`` as ``"1"``, ``"0"`` with digit-splitting tokenizers: SmolLM2, Qwen, Llama 2)
    is read along the sampled path: when the sampled first token is a strict start of the choice,
    P(first) x P(second starts with the rest | first) is added, with P(first) summed over the top
    tokens that spell the sampled one (``"1"``, ``" 1"``) and the conditional from the second
    position's top list. The approximation: a server shows the second position of the sampled
    path only, so the continuation of an unsampled first token is unknown; such choices are
    returned as *unresolved*. A choice that is itself one of the first tokens (OpenAI's tokenizer
    has ``"10"``) needs no chain (their mass stays in the shorter choice, as
    :attr:`~llmrerank.protocol.Completion.unresolved` says). The local backend computes
    every chain exactly; both match tokens with :func:`~llmrerank.backends.base.counts_for_choice`.
    """
    if not positions:
        return {}, ()
    token, logprob, top = positions[0]
    top = list(top) or [(token, logprob)]
    found = choice_logprobs(top, choices)
    sampled = token.strip().lower()
    family = [lp for t, lp in top if t.strip().lower() == sampled] or [logprob]
    starts = {t.strip().lower() for t, _ in top} | {sampled}
    unresolved: list[str] = []
    for choice in choices:
        key = choice.strip().lower()
        if key in starts:
            continue  # the tokenizer spells it in one token (OpenAI's "10"): no chain to read
        prefixes = {start for start in starts if start and len(start) < len(key) and key.startswith(start)}
        if sampled in prefixes and len(positions) > 1:
            _, next_logprob, next_top = positions[1]
            second = list(next_top) or [(positions[1][0], next_logprob)]
            rest = key[len(sampled) :]
            continued = [lp for t, lp in second if counts_for_choice(t.lower(), rest)]
            if continued:
                chain = _logsumexp(family) + _logsumexp(continued)
                found[choice] = _logsumexp([found.get(choice, -math.inf), chain])
            prefixes.discard(sampled)
        if prefixes:
            unresolved.append(choice)
    return found, tuple(unresolved)


def logprob_positions(choices: Sequence[str]) -> int:
    """Output tokens to ask for when reading ``choices`` from log-probs: two when a choice starts
    with another one (``"10"`` and ``"1"``: a tokenizer that splits digits writes ``"1"`` first, and
    only the second token tells them apart), else one."""
    keys = [c.strip().lower() for c in choices]
    return 2 if any(a != b and a and b.startswith(a) for a in keys for b in keys) else 1


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


class OpenAIBackend(SDKBackend):
    """Chat completions through the official ``openai`` SDK (``pip install "llmrerank[openai]"``).

    Args:
        model: The model name (default ``"gpt-4o-mini"``).
        api_key: The API key; None: the SDK reads ``OPENAI_API_KEY``. A server started without a
            key takes any (the SDK insists on one).
        base_url: Any OpenAI-compatible server (``http://localhost:8000/v1`` for vLLM); None: the
            SDK reads ``OPENAI_BASE_URL``.
        client: An ``openai.AsyncOpenAI`` used as is (and not closed by :meth:`aclose`); None: one
            client is made per event loop.
        timeout: Seconds per call, retries included.
        max_retries: Retries per call, of what a retry can fix
            (:func:`~llmrerank.backends.sdk.retry_wait`; the SDK itself never retries, a ``client``
            you pass included). ``timeout`` and ``max_retries`` None are picked by server
            (:func:`~llmrerank.backends.servers.call_defaults`): 60 s for a hosted API, 300 s for a
            local server, 2 retries for both; a timed-out call to a local server is not retried,
            since the server keeps working on a request the client abandoned.
        temperature: None leaves it out of the request.
        logprobs: Sets :attr:`supports_logprobs` (None: True, except for reasoning models). OpenAI,
            vLLM and llama.cpp return token log-probs, so prompts with ``choices`` are asked for one
            token (two when a choice starts with another, for tokenizers that split ``"10"``:
            :func:`logprob_positions`) with its top alternatives (:func:`chained_logprobs`). Servers
            that ignore the parameter still give text.
        likelihood: True sets :attr:`supports_likelihood` for the ``query_likelihood`` strategy:
            each (context, continuation) pair is one ``/v1/completions`` request with ``echo=True,
            logprobs=1, max_tokens=0`` whose echoed prompt log-probs are summed over the
            continuation (:func:`echoed_likelihood`). vLLM answers it (a base or instruct model
            served with ``vllm serve``); llama.cpp's server and Ollama do not echo prompt log-probs
            (a :class:`~llmrerank.errors.BadRequestError` says so), and OpenAI's own chat models have
            no completions endpoint.
        default_headers: HTTP headers sent with every request (given to the client this backend makes).
        reasoning: Marks a model that thinks before answering (o-series, gpt-5, gpt-oss,
            DeepSeek-R1, or a thinking model you serve); None: by the model's name
            (:func:`~llmrerank.backends.servers.is_reasoning_model`). Then no temperature is sent, no
            log-probs are asked for, and each answer's token budget grows by ``reasoning_budget``
            (thinking counts against it), sent as ``max_completion_tokens`` to OpenAI's API and for
            OpenAI's reasoning models wherever they are served (they reject ``max_tokens``), as
            ``max_tokens`` to other servers. The thinking never counts as the answer:
            ``reasoning_content`` is ignored and ``<think>`` blocks are dropped by the parsers (an
            unclosed one means no answer). Thinking tokens are counted in
            :attr:`~llmrerank.types.Usage.reasoning_tokens` where the server reports them.
        reasoning_effort: ``"minimal"``, ``"low"``, ``"medium"`` or ``"high"``, sent as
            ``reasoning_effort`` when set.
        reasoning_budget: Tokens added to each answer's budget for a reasoning model.
        context_tokens: The model's context window, for sizing prompts (listwise windows shrink to
            fit): an int you know (the server's ``-c`` / ``--max-model-len``), ``"auto"`` to ask the
            server once (llama.cpp ``GET /props``, vLLM ``GET /v1/models``; 2 s at most, cached), or
            None (unknown; learned from the first context-length error whose message states it).
    """

    name = "openai"
    client_class = "AsyncOpenAI"
    error_class = "OpenAIError"
    title = "OpenAI"
    base_url_env = "OPENAI_BASE_URL"
    api_key_env = "OPENAI_API_KEY"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        logprobs: bool | None = None,
        likelihood: bool = False,
        reasoning: bool | None = None,
        reasoning_effort: str | None = None,
        reasoning_budget: int = REASONING_BUDGET,
        context_tokens: int | Literal["auto"] | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        if reasoning_budget < 0:
            raise ConfigurationError("reasoning_budget must be >= 0")
        if (
            context_tokens is not None
            and context_tokens != "auto"
            and (isinstance(context_tokens, bool) or not isinstance(context_tokens, int) or context_tokens < 1)
        ):
            raise ConfigurationError(f"context_tokens must be a positive int, 'auto' or None, got {context_tokens!r}")
        options.setdefault("temperature", 0.0)
        super().__init__(require("openai", "openai"), model, **options)
        self.reasoning = is_reasoning_model(model) if reasoning is None else reasoning
        """Whether the model thinks before answering (see the class docstring)."""
        self.reasoning_effort = reasoning_effort
        self.reasoning_budget = reasoning_budget
        self.answer_reserve = reasoning_budget if self.reasoning else 0
        self.supports_logprobs = (not self.reasoning) if logprobs is None else logprobs
        self.context_tokens = context_tokens if isinstance(context_tokens, int) else None
        self._discover_pending = context_tokens == "auto"  # "auto": ask the server once, before the first rerank
        self._tokenizer: bool | None = None  # whether the server has a /tokenize (None: not asked yet)
        self.supports_likelihood = likelihood

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        """One echoing ``/v1/completions`` request per pair, concurrently (see the class docstring)."""
        calls = (self._continuation(context, continuation) for context, continuation in pairs)
        return list(await asyncio.gather(*calls, return_exceptions=True))

    async def _continuation(self, context: str, continuation: str) -> LogLikelihood:
        prompt = context + continuation
        options: dict[str, Any] = {"model": self.model, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0}
        response = await self._request(lambda: self._current_client().completions.create(**options))
        return echoed_likelihood(response, prompt, continuation, self.name)

    async def discover(self) -> None:
        """With ``context_tokens="auto"``: ask the server once for its context size (never OpenAI's API)."""
        if not self._discover_pending:
            return
        self._discover_pending = False
        if self.server_url and not is_openai_api(self.server_url):
            key = self.api_key or os.environ.get("OPENAI_API_KEY")
            found = await discover_context(self.server_url, self.model, key)
            if found is not None and self.context_tokens is None:
                self.context_tokens = found

    async def count_tokens(self, text: str) -> int | None:
        """The server's own count of ``text`` (``POST /tokenize``: llama.cpp, vLLM); None from a server
        without one (asked once: a server that cannot answer is not asked again) and OpenAI's API."""
        if self._tokenizer is False or not self.server_url or is_openai_api(self.server_url):
            return None
        found = await count_tokens(self.server_url, self.model, self.api_key or os.environ.get("OPENAI_API_KEY"), text)
        if self._tokenizer is None:
            self._tokenizer = found is not None
        return found

    def cache_identity(self) -> dict[str, object]:
        """Base URL, temperature, whether log-probs are asked for, and the reasoning settings."""
        identity = {**super().cache_identity(), "logprobs": self.supports_logprobs}
        if self.reasoning:
            identity.update(reasoning_effort=self.reasoning_effort, reasoning_budget=self.reasoning_budget)
        return identity

    async def generate(self, prompt: Prompt) -> Completion:
        """One chat completion; with ``prompt.choices`` and log-probs, also the choices' log-probs."""
        response = await self._request(
            lambda: self._current_client().chat.completions.create(**self.request_options(prompt))
        )
        return self.completion_from(response, prompt)

    def _wants_logprobs(self, prompt: Prompt) -> bool:
        return bool(prompt.choices) and self.supports_logprobs

    def request_options(self, prompt: Prompt) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for ``prompt`` (also the body of a Batch API request)."""
        messages = [{"role": "user", "content": prompt.user}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": prompt.system})
        options: dict[str, Any] = {"model": self.model, "messages": messages}
        budget = prompt.max_tokens
        if self._wants_logprobs(prompt):
            budget = logprob_positions(prompt.choices or ())
            options.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        if self.reasoning:
            native = is_openai_api(self.server_url) or is_openai_reasoning_model(self.model)
            # The thinking room is the answer_reserve that prompt_room() keeps free: one number for both.
            options["max_completion_tokens" if native else "max_tokens"] = budget + self.answer_reserve
        else:
            options["max_tokens"] = budget
            if self.temperature is not None:
                options["temperature"] = self.temperature
        if self.reasoning_effort is not None:
            options["reasoning_effort"] = self.reasoning_effort
        return options

    def completion_from(self, response: Any, prompt: Prompt) -> Completion:
        """The :class:`Completion` in a chat completion response (an SDK object) to ``prompt``.

        Only the message's ``content`` is the answer: ``reasoning_content`` (vLLM, DeepSeek) is not.

        Raises :class:`~llmrerank.errors.InvalidResponseError` when it is not one (no choices, an
        HTML page, a JSON array), its content is neither text nor text parts, or it has no content
        at all (``null``) with no log-probs, refusal or thinking beside it. Token counts that are
        not whole numbers >= 0 count as unknown (:func:`~llmrerank.backends.base.token_count`).
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
        content = getattr(message, "content", None)
        text = message_text(content, self.name)
        usage = getattr(response, "usage", None)
        details = getattr(usage, "completion_tokens_details", None)
        cached_tokens = token_count(getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0))
        lp = None
        unresolved: tuple[str, ...] = ()
        if self._wants_logprobs(prompt) and prompt.choices:
            tokens = getattr(getattr(first, "logprobs", None), "content", None)
            if tokens:
                positions = [
                    (p.token, p.logprob, [(t.token, t.logprob) for t in (p.top_logprobs or ())]) for p in tokens
                ]
                lp, unresolved = chained_logprobs(positions, prompt.choices)
        finish_reason = getattr(first, "finish_reason", None)
        if content is None and lp is None and not _said_something(message, finish_reason):
            # Nothing to read and nothing wrong with the prompt: a failed call (retried by the next
            # rerank), never an empty answer for the cache to serve from now on.
            raise InvalidResponseError(
                f"the chat completion has no content (finish_reason {finish_reason!r})", backend=self.name
            )
        model = getattr(response, "model", None)
        return Completion(
            text=text,
            prompt_tokens=token_count(getattr(usage, "prompt_tokens", 0)),
            completion_tokens=token_count(getattr(usage, "completion_tokens", 0)),
            choice_logprobs=lp,
            finish_reason=finish_reason,
            model=model if isinstance(model, str) and model else None,
            reasoning_tokens=token_count(getattr(details, "reasoning_tokens", 0)),
            unresolved=unresolved,
            cached_prompt_tokens=cached_tokens,
        )


def _said_something(message: Any, finish_reason: Any) -> bool:
    """Whether a message without content still answered: a refusal, or a model that thought until
    its token budget ran out (``finish_reason="length"``, thinking in ``reasoning_content``)."""
    if finish_reason == "length":
        return True
    return any(getattr(message, name, None) for name in ("refusal", "reasoning_content", "reasoning"))


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


__all__ = [
    "REASONING_BUDGET",
    "TOP_LOGPROBS",
    "OpenAIBackend",
    "chained_logprobs",
    "choice_logprobs",
    "echoed_likelihood",
    "logprob_positions",
    "message_text",
]
