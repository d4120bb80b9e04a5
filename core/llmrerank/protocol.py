"""The types every layer shares, at the bottom beside :mod:`llmrerank.types` and :mod:`llmrerank.errors`.

A strategy builds :class:`Prompt` objects and reads each answer as a :class:`Completion` (or, for
a likelihood step, a :class:`LogLikelihood`); it knows of the call what a :class:`Context` says and
returns a :class:`Ranking`. Backends, strategies, fusion, the cache, the driver and the reranker
all name these types from here, so none of them imports another to do so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .types import Diagnostic, ScoreKind


@dataclass(frozen=True)
class Prompt:
    """One LLM request, as built by a strategy.

    When ``choices`` is set the strategy wants the log-probability of each choice as the
    answer's first token(s) (e.g. ``("Yes", "No")`` or ``("0", ..., "10")``); backends with
    ``supports_logprobs`` fill :attr:`Completion.choice_logprobs`, the others just generate.
    """

    system: str
    user: str
    max_tokens: int = 16
    choices: tuple[str, ...] | None = None
    shrink: Callable[[], Prompt] | None = field(default=None, compare=False, repr=False)
    """Builds a smaller version of this prompt, sent once instead when the backend answers that this
    one does not fit the model's context (:class:`~llmrerank.errors.ContextLengthError`). Built only
    then. None (the built-in strategies): the driver cuts each document of the prompt to half."""


@dataclass(frozen=True)
class Completion:
    """A backend's answer to one :class:`Prompt`."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    choice_logprobs: Mapping[str, float] | None = None
    """log P(answer starts with choice) for each choice the backend could see; absent ones are missing.
    (The response cache also keeps a :class:`LogLikelihood` in this form: :meth:`LogLikelihood.as_completion`.)"""
    cached: bool = False
    finish_reason: str | None = None
    """Why generation stopped, as the backend reports it (``stop``, ``length``, ...), if it does."""
    cached_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those the provider read from its prompt prefix cache (billed at a
    discount), when it says so."""
    model: str | None = None
    """The model that answered, as the server named it (llama.cpp answers with its own name
    whatever was asked); None when the backend does not say."""
    reasoning_tokens: int = 0
    """Completion tokens the model spent thinking, when the server reports them apart
    (OpenAI's ``completion_tokens_details.reasoning_tokens``); part of ``completion_tokens``."""
    unresolved: tuple[str, ...] = ()
    """Choices whose probability the backend could see only through their first token, which
    they share with a shorter choice (``"10"`` behind ``"1"`` when the server showed no
    continuation of an unsampled ``"1"``): their mass sits in the shorter choice."""


@dataclass(frozen=True)
class LogLikelihood:
    """log P(continuation | context) under a language model: the sum over the continuation's tokens.

    The answer to each pair of a likelihood step (:class:`~llmrerank.strategies.base.Likelihood`,
    :meth:`~llmrerank.backends.base.Backend.continuation_logprobs`). The response cache stores it as
    a :class:`Completion` whose ``choice_logprobs`` is ``{"logprob": logprob, "tokens": tokens}``
    (:meth:`as_completion`, :meth:`from_completion`), so that one cache format holds both answers.
    """

    logprob: float
    """Sum of the continuation tokens' log-probabilities (natural log, <= 0)."""
    tokens: int
    """How many tokens the continuation was scored as (>= 1)."""
    prompt_tokens: int = 0
    """Tokens the model read for it (context and continuation), for accounting."""
    cached: bool = False

    def as_completion(self) -> Completion:
        """This result in the form the response cache stores."""
        lp = {"logprob": self.logprob, "tokens": float(self.tokens)}
        return Completion(text="", prompt_tokens=self.prompt_tokens, completion_tokens=0, choice_logprobs=lp)

    @classmethod
    def from_completion(cls, completion: Completion) -> LogLikelihood:
        """The result :meth:`as_completion` stored; ``ValueError`` for anything else."""
        lp = completion.choice_logprobs or {}
        if "logprob" not in lp or "tokens" not in lp:
            raise ValueError("not a stored log-likelihood")
        return cls(float(lp["logprob"]), int(lp["tokens"]), completion.prompt_tokens, completion.cached)


@dataclass(frozen=True)
class Context:
    """What a plan may know about the call besides the query and the documents."""

    top_k: int | None = None
    supports_logprobs: bool = False
    strict: bool = False
    domain: str | None = None
    pointwise_method: str = "expected"
    """The backend's preferred log-prob scoring for pointwise (``expected`` or ``yes_no``)."""
    preferred_strategy: str = "listwise"
    """The backend's preferred strategy, for a hybrid strategy whose ``llm`` is None."""
    context_tokens: int | None = None
    """Tokens a prompt and its answer may take together (the model's context less what the backend
    adds to every answer); None when unknown. Strategies fit their prompts into it."""
    chars_per_token: float | None = None
    """Characters per token to fit prompts by, measured with the server's tokenizer on this rerank's
    documents; None: the cautious default (:data:`~llmrerank.prompts.FIT_CHARS_PER_TOKEN`)."""


@dataclass
class Ranking:
    """What a plan returns: a full order of the documents it was given (positions 0..n-1)."""

    order: list[int]
    score_kind: ScoreKind
    scores: dict[int, float] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    unjudged: set[int] = field(default_factory=set)
    """Documents whose place no model answer decided (failed call, unreadable answer). They keep a
    fallback place (their first-stage order among themselves) and no score unless a prefilter gave one."""
