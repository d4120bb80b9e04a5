"""The strategy contract: pure prompt-building and parsing, driven by one async driver.

A strategy's :meth:`Strategy.plan` is a generator. It yields a *step* (a list of
:class:`~llmrerank.protocol.Prompt`, a :class:`Predict` for a cross-encoder, or a
:class:`Likelihood` for continuation log-probabilities) and receives,
for each item of the step, either the answer or the exception that call ended in. When it is done
it returns a :class:`Ranking`. It never performs I/O, so the same plan runs under the async driver,
in tests step by step, and in any future driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from ..diagnostics import CONTEXT_FITTED, CONTEXT_TOO_SMALL, LOGPROBS_UNUSABLE
from ..errors import ConfigurationError
from ..parsing import unusable_logprobs
from ..prompts import Clip, clip, fit_chars
from ..protocol import Completion, Context, Prompt, Ranking
from ..types import Diagnostic, Document


@dataclass(frozen=True)
class Predict:
    """A step that asks a cross-encoder-like scorer for ``scorer(pairs)`` (run off the event loop)."""

    scorer: Callable[[list[tuple[str, str]]], Sequence[float]]
    pairs: list[tuple[str, str]]


@dataclass(frozen=True)
class Likelihood:
    """A step that asks for log P(continuation | context) of each ``(context, continuation)`` pair.

    The answers are :class:`~llmrerank.protocol.LogLikelihood` objects (or the exception a
    pair ended in); it needs a backend with ``supports_likelihood``.
    """

    pairs: list[tuple[str, str]]


Step = Union[list[Prompt], Predict, Likelihood]  # noqa: UP007 - a runtime alias, kept valid on 3.10
Answer = Union[Completion, BaseException]  # noqa: UP007
Plan = Generator[Step, Any, "Ranking"]


class Strategy(ABC):
    """A reranking strategy. Subclasses are frozen dataclasses of options plus :meth:`plan`."""

    name: ClassVar[str]
    yields_likelihood: ClassVar[bool] = False
    """True when the plan yields :class:`Likelihood` steps (the backend must support them; a hybrid
    strategy's LLM strategy decides for it: :func:`~llmrerank.strategies.uses_likelihood`)."""
    max_doc_chars: int | None = None
    """The most characters of a document the strategy's LLM prompts keep; None: no cut. Each
    built-in strategy declares its own default as a dataclass field."""

    @abstractmethod
    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """Yield steps, receive answers, return a :class:`Ranking` over ``range(len(docs))``."""

    def absolute_scores(self, ctx: Context) -> bool:
        """Whether this strategy's scores sit on a fixed scale comparable across queries (0-10
        ratings), so that a ``min_score`` threshold means something. False unless a subclass says so."""
        return False

    def doc_chars(self, ctx: Context) -> int | None:
        """The most characters of a document this strategy's LLM prompts keep (its ``max_doc_chars``;
        None: no cut), before any fitting to a known context."""
        return self.max_doc_chars


def check_int(name: str, value: object, low: int) -> None:
    """Raise :class:`~llmrerank.errors.ConfigurationError` unless ``value`` is an int >= ``low``
    (``"20"``, ``2.5`` and ``True`` are not): a strategy's numeric setting, checked when it is made."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")


def logprobs_note(
    answer: Completion, choices: tuple[str, ...], index: int | None = None, where: str = ""
) -> list[Diagnostic]:
    """A ``logprobs_unusable`` diagnostic when the answer's log-probs hold a NaN, +Infinity or positive
    value on one of ``choices`` (:func:`~llmrerank.parsing.unusable_logprobs`): its text was read instead."""
    bad = unusable_logprobs(answer.choice_logprobs, choices)
    if not bad:
        return []
    values = ", ".join(f"{c!r}: {float((answer.choice_logprobs or {})[c])}" for c in bad)
    message = f"{where}{': ' if where else ''}log-probs that no probability has ({values}); the answer's text was read"
    return [Diagnostic(LOGPROBS_UNUSABLE, message, index)]


def failure(answer: Any) -> BaseException | None:
    """Return the exception when a call failed, else None."""
    return answer if isinstance(answer, BaseException) else None


def shrinkable(build: Callable[[list[str]], Prompt], texts: Sequence[str]) -> Prompt:
    """``build(texts)``. Kept for strategies written against it: the driver now cuts the documents of
    any prompt too long for the model by itself (:func:`~llmrerank.prompts.halve_documents`)."""
    return build(list(texts))


USEFUL_DOC_CHARS = 400
"""Documents cut below this many characters to fit the context are too short to judge well (a title
and a sentence or two): the rerank says ``context_too_small``."""
USEFUL_WINDOW = 4
"""Listwise windows fitted below this many documents compare too few at once (and multiply the
calls: ``n - 1`` windows of 2): the rerank says ``context_too_small``."""


def cut_to_fit(cap: int, ctx: Context) -> list[Diagnostic]:
    """The diagnostics of documents cut to ``cap`` characters to fit ``ctx.context_tokens``:
    ``context_fitted``, and ``context_too_small`` below :data:`USEFUL_DOC_CHARS`."""
    fitted = f"documents cut to {cap} characters to fit {ctx.context_tokens} tokens of context"
    notes = [Diagnostic(CONTEXT_FITTED, fitted)]
    if cap < USEFUL_DOC_CHARS:
        notes.append(Diagnostic(CONTEXT_TOO_SMALL, f"{fitted}, under the {USEFUL_DOC_CHARS} a judgment needs"))
    return notes


def fitted_cap(build: Callable[[list[str]], Prompt], texts: Sequence[str], count: int, ctx: Context) -> int | None:
    """The most characters per document with which ``build`` over the ``count`` longest of ``texts``
    fits the model's context (``ctx.context_tokens``); None when the context is unknown, there is no
    text, or the prompt fits as it is."""
    if ctx.context_tokens is None or not texts:
        return None
    longest = sorted(texts, key=len, reverse=True)[:count]
    return fit_chars(
        lambda chars: build([t[:chars] for t in longest]), len(longest[0]), ctx.context_tokens, ctx.chars_per_token
    )


def cut_clips(clipped: list[Clip], cap: int | None, ctx: Context) -> tuple[list[Clip], list[Diagnostic]]:
    """The documents cut to ``cap`` characters (:func:`fitted_cap`; None: as they are), with the
    diagnostics of the cut (:func:`cut_to_fit`)."""
    if cap is None:
        return clipped, []
    return [clip(c.text, cap) if len(c.text) > cap else c for c in clipped], cut_to_fit(cap, ctx)


def fit_documents(
    clipped: list[Clip], build: Callable[[list[str]], Prompt], count: int, ctx: Context
) -> tuple[list[Clip], list[Diagnostic]]:
    """Cut the documents further, when the model's context is known (``ctx.context_tokens``), so that
    a prompt over the ``count`` longest of them fits; with a ``context_fitted`` diagnostic when cut
    (and ``context_too_small`` when cut below :data:`USEFUL_DOC_CHARS`)."""
    return cut_clips(clipped, fitted_cap(build, [c.text for c in clipped], count, ctx), ctx)
