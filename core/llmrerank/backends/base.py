"""The backend contract: turn one prompt into one completion (optionally with choice log-probs).

Backends with :attr:`Backend.supports_likelihood` also score a given text: the log-probability of a
continuation after a context (:meth:`Backend.continuation_logprobs`), for query-likelihood ranking.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..fusion import Fusion


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


@dataclass(frozen=True)
class Completion:
    """A backend's answer to one :class:`Prompt`."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    choice_logprobs: Mapping[str, float] | None = None
    """log P(answer starts with choice) for each choice the backend could see; absent ones are missing."""
    cached: bool = False


@dataclass(frozen=True)
class LogLikelihood:
    """log P(continuation | context) under a language model: the sum over the continuation's tokens."""

    logprob: float
    """Sum of the continuation tokens' log-probabilities (natural log, <= 0)."""
    tokens: int
    """How many tokens the continuation was scored as (>= 1)."""
    prompt_tokens: int = 0
    """Tokens the model read for it (context and continuation), for accounting."""
    cached: bool = False

    completion_tokens: ClassVar[int] = 0
    """Nothing is generated; kept so the driver accounts for it like a :class:`Completion`."""

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


LIKELIHOOD_SYSTEM = "\x00continuation-logprob"
"""Marks the :class:`Prompt` that stands for a likelihood request in the response cache's keys."""


def likelihood_prompt(context: str, continuation: str) -> Prompt:
    """The cache-key form of a likelihood request (never sent to a model as a prompt)."""
    return Prompt(LIKELIHOOD_SYSTEM, context, max_tokens=0, choices=(continuation,))


def counts_for_choice(text: str, key: str) -> bool:
    """Whether a token's lower-cased ``text`` counts for the lower-cased choice ``key`` (its start).

    ``text`` must start with ``key``; after a letter the next character must not be a letter. So
    ``"10"`` counts for ``"1"`` and ``"yes,"`` for ``"yes"``, but ``"answer"`` does not count for
    ``"a"``. Every backend that fills :attr:`Completion.choice_logprobs` matches tokens this way.
    """
    if not key or not text.startswith(key):
        return False
    return len(text) == len(key) or not (key[-1].isalpha() and text[len(key)].isalpha())


class Backend(ABC):
    """An LLM that answers prompts. Subclasses implement :meth:`generate`.

    Retries and per-call timeouts are the SDK's business (``max_retries``, ``timeout``);
    a backend raises :class:`~llmrerank.errors.BackendError` subclasses once they are spent.
    """

    name: str = "backend"
    """Short backend name, used in cache keys and reports (``openai``, ``anthropic``, ``local``)."""
    model: str = ""
    """Model name, free text."""
    supports_logprobs: bool = False
    """True when :meth:`generate` fills ``choice_logprobs`` for prompts with ``choices``."""
    batch_size: int = 1
    """How many prompts :meth:`generate_batch` handles at once; the driver chunks by this."""
    preferred_strategy: str = "listwise"
    """Strategy used when the caller names none."""
    supports_likelihood: bool = False
    """True when :meth:`continuation_logprobs` works (needed by the ``query_likelihood`` strategy)."""
    preferred_fusion: Fusion | None = None
    """The :class:`~llmrerank.fusion.Fusion` a :class:`~llmrerank.Reranker` applies by default with the
    preferred strategy when the documents carry first-stage scores (None: no fusion)."""

    @abstractmethod
    async def generate(self, prompt: Prompt) -> Completion:
        """Answer one prompt."""

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        """Answer several prompts; an entry is an exception when that prompt failed."""
        return list(await asyncio.gather(*(self.generate(p) for p in prompts), return_exceptions=True))

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        """log P(continuation | context) for each ``(context, continuation)`` pair; an entry is an
        exception when that pair failed. Only backends with :attr:`supports_likelihood` implement it."""
        raise ConfigurationError(f"{type(self).__name__} cannot score a continuation's log-probability")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections; optional."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
