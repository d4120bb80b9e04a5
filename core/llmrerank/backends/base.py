"""The backend contract: turn one prompt into one completion (optionally with choice log-probs)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


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
    """Builds a smaller version of this prompt (documents cut further), sent once instead when the
    backend answers that this one does not fit the model's context
    (:class:`~llmrerank.errors.ContextLengthError`). Built only then."""


@dataclass(frozen=True)
class Completion:
    """A backend's answer to one :class:`Prompt`."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    choice_logprobs: Mapping[str, float] | None = None
    """log P(answer starts with choice) for each choice the backend could see; absent ones are missing."""
    cached: bool = False
    finish_reason: str | None = None
    """Why generation stopped, as the backend reports it (``stop``, ``length``, ...), if it does."""
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
    context_tokens: int | None = None
    """The model's context window in tokens, when known: configured, discovered
    (:meth:`discover`) or learned from a context-length error. Strategies size prompts to fit it."""
    answer_reserve: int = 0
    """Tokens the backend asks for on top of every prompt's answer budget (a reasoning budget):
    the context must hold them too."""

    def prompt_room(self) -> int | None:
        """Tokens a prompt and its answer may take together: :attr:`context_tokens` less
        :attr:`answer_reserve`; None when the context size is unknown."""
        if self.context_tokens is None:
            return None
        return max(self.context_tokens - self.answer_reserve, 1)

    async def discover(self) -> None:  # noqa: B027 - optional hook
        """Ask the server, once, what it reports about itself (its context size); optional, never raises.

        Called before each rerank; a backend caches what it learned.
        """

    @abstractmethod
    async def generate(self, prompt: Prompt) -> Completion:
        """Answer one prompt."""

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        """Answer several prompts; an entry is an exception when that prompt failed."""
        return list(await asyncio.gather(*(self.generate(p) for p in prompts), return_exceptions=True))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections; optional."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
