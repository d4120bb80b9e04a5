"""The types every layer shares: what a strategy knows of a call and what its plan returns.

They sit at the bottom, beside :mod:`llmrerank.types` (the result types) and :mod:`llmrerank.errors`,
so that strategies, backends, fusion, the driver and the reranker all import them from here and
none of those has to import another to name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import Diagnostic, ScoreKind


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
