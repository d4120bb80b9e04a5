"""The frozen result types, and the :class:`Document` view of a caller's document that strategies read.

Turning the caller's input into those views (and checking it) is :mod:`llmrerank.inputs`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

ScoreKind = Literal[
    "relevance",
    "logprob",
    "win_rate",
    "first_token",
    "rank",
    "cross_encoder",
    "input_order",
    "likelihood",
    "fused",
    "borda",
    "probability",
]
"""What :attr:`RankedDocument.score` means. Higher is always better.

- ``relevance``: the LLM's own 0-10 rating, read from its answer (10 answers the query fully).
- ``logprob``: expected 0-10 rating under the next-token log-probabilities (or 10 x P(Yes)).
- ``win_rate``: share of pairwise comparisons won, in [0, 1] (both orders of each pair asked).
- ``first_token``: listwise with log-probabilities: P(this document's label is the first one the
  model writes), in [0, 1], relative to the other documents of its window.
- ``rank``: the model ordered the documents but gave no score (listwise, pairwise sort):
  ``score`` is None and :attr:`RankedDocument.rank` is all there is.
- ``cross_encoder``: the hybrid prefilter's raw score (its LLM stage failed); unbounded.
- ``input_order``: nothing was ranked (empty input, or every call failed): ``score`` is None.
- ``likelihood``: log P(query | document) under the language model (query likelihood), normalised
  as :class:`~llmrerank.strategies.QueryLikelihood` says.
- ``fused``: the LLM's score combined with the first-stage score (:mod:`llmrerank.fusion`).
- ``borda``: listwise with ``self_consistency`` > 1: the document's Borda points over the most it
  could get, in [0, 1] (1: first in every shuffled pass of its window), relative to its window.
- ``probability``: a calibrated probability of relevance in [0, 1], from a calibration fitted on
  judged queries (``Reranker(..., calibration=FILE)``; :mod:`llmrerank.calibration`).

A document whose place no model answer decided (:attr:`RankedDocument.fallback`) never gets a
score made up for it: its ``score`` is None unless the prefilter scored it (``cross_encoder``).
"""

ABSOLUTE_SCORE_KINDS: frozenset[str] = frozenset({"relevance", "logprob"})
"""Score kinds on a fixed 0-10 scale, comparable across queries: the ones ``min_score`` accepts."""

Status = Literal["reranked", "partial", "fallback"]
"""Whether a result was reranked: fully, partly (some calls failed or answers were unreadable), or
not at all (every document keeps a fallback order)."""

DEGRADED_REASONS = (
    "call_failed",
    "unreadable_answer",
    "incomplete_answer",
    "prefilter_failed",
    "deadline_exceeded",
    "context_too_small",
)
"""The reason codes of :attr:`RerankResult.degraded_reasons`.

- ``call_failed``: an LLM call failed after its retries (the warning names the error).
- ``unreadable_answer``: an answer held no ranking, score or choice that could be read.
- ``incomplete_answer``: a listwise answer named only some of its documents; the others follow in
  their previous order, marked ``fallback``.
- ``prefilter_failed``: the hybrid strategy's cross-encoder failed.
- ``deadline_exceeded``: the rerank's ``deadline`` passed with calls unanswered.
- ``context_too_small``: the model's context (per request) held too little for the strategy to
  work as meant: documents cut below a few hundred characters, or listwise windows of fewer than
  4 documents. The model placed every document, on too little text or too few at a time: the
  status is ``partial``, never ``reranked``, and the diagnostic of that code says how small.
"""

D = TypeVar("D")
"""The type of the caller's documents."""


@dataclass(frozen=True)
class Document:
    """A caller's document as the strategies see it: its input position and its text."""

    index: int
    text: str
    id: str | None = None


@dataclass(frozen=True)
class Diagnostic:
    """One thing worth knowing about how a result was produced.

    ``code`` is stable and machine-readable (e.g. ``score_parsed``, ``score_unparsed``,
    ``permutation_repaired``, ``missing_appended``, ``call_failed``, ``fallback_input_order``,
    ``truncated``, ``deadline_exceeded``); ``index`` names the document it is about, if any.
    """

    code: str
    message: str = ""
    index: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a rerank spent: LLM calls, tokens and time."""

    calls: int = 0
    """LLM calls that reached the backend (cache hits excluded); calls cut off by the deadline count
    here once, and once in :attr:`failed_calls`, so ``failed_calls <= calls``."""
    cached_calls: int = 0
    """Calls answered from the response cache."""
    failed_calls: int = 0
    """Calls that ended in an error after their retries, or were cut off by the deadline."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    """Sum of the latencies of the LLM calls (overlapping calls count in full)."""
    wall_seconds: float = 0.0
    """Wall-clock time of the whole rerank."""
    cached_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those the provider read from its prompt prefix cache and bills at a
    discount (OpenAI ``prompt_tokens_details.cached_tokens``, Anthropic ``cache_read_input_tokens``)."""
    reasoning_tokens: int = 0
    """Completion tokens spent thinking (reasoning models), as far as the server reports them;
    already part of ``completion_tokens``."""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            cached_calls=self.cached_calls + other.cached_calls,
            failed_calls=self.failed_calls + other.failed_calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            llm_seconds=self.llm_seconds + other.llm_seconds,
            wall_seconds=self.wall_seconds + other.wall_seconds,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True)
class RankedDocument(Generic[D]):
    """One document in a rerank result."""

    index: int
    """Position of the document in the input list."""
    document: D
    """The caller's own object, unchanged."""
    score: float | None
    """Higher is better; what it means is :attr:`RerankResult.score_kind`. None: no score (a
    rank-only strategy, or a document no model answer placed)."""
    rank: int
    """1-based position in the result."""
    reason: str | None = None
    """The LLM's one-line reason, when the strategy asked for one."""
    diagnostics: tuple[Diagnostic, ...] = ()
    """Diagnostics about this document (``score_parsed``, ``missing_appended``, ``call_failed``, ...)."""
    fallback: bool = False
    """True when no model answer decided this document's place: its call failed or its answer was
    unreadable, and it keeps a fallback place (after the judged documents, in input order)."""


@dataclass(frozen=True)
class RerankResult(Sequence[RankedDocument[D]]):
    """The reranked documents, best first, with what it cost and what went wrong.

    Iterating yields :class:`RankedDocument` items; ``len(result)`` is the number returned
    (``top_k`` or all, less those below ``min_score``). How to tell a real rerank from a fallback:
    :attr:`status` (``reranked``, ``partial``, ``fallback``), :attr:`degraded` with
    :attr:`degraded_reasons`, and :attr:`RankedDocument.fallback` per document.
    """

    items: tuple[RankedDocument[D], ...]
    query: str
    strategy: str
    score_kind: ScoreKind
    usage: Usage = field(default_factory=Usage)
    diagnostics: tuple[Diagnostic, ...] = ()
    degraded: bool = False
    """True when any part of the order is a fallback: a call failed, an answer was unreadable, the
    prefilter failed or the deadline passed. :attr:`degraded_reasons` says which."""
    degraded_reasons: tuple[str, ...] = ()
    """Reason codes, from :data:`DEGRADED_REASONS`; empty when not degraded."""
    status: Status = "reranked"
    """``reranked``: every document was placed by the model. ``partial``: degraded, but some
    documents were placed by the model. ``fallback``: nothing was reranked."""
    dropped: tuple[RankedDocument[D], ...] = ()
    """Documents judged below ``min_score``, best first; not in :attr:`items`."""
    model: str | None = None
    """The model that answered, as the server named it in its responses (a llama.cpp server
    answers with its own name whatever was asked); None when no answer named one."""

    @overload
    def __getitem__(self, i: int) -> RankedDocument[D]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[RankedDocument[D]]: ...
    def __getitem__(self, i: int | slice) -> RankedDocument[D] | Sequence[RankedDocument[D]]:
        return self.items[i]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RankedDocument[D]]:
        return iter(self.items)

    @property
    def documents(self) -> list[D]:
        """The caller's documents in the new order."""
        return [item.document for item in self.items]

    @property
    def indices(self) -> list[int]:
        """Input positions in the new order."""
        return [item.index for item in self.items]

    @property
    def reranked(self) -> bool:
        """True when the model placed every document (:attr:`status` is ``reranked``)."""
        return self.status == "reranked"

    def summary(self) -> dict[str, Any]:
        """What the rerank did, as JSON-able data (no documents): strategy, model, score kind, status,
        degraded and why, usage, diagnostics, and the input positions in the new order."""
        return {
            "strategy": self.strategy,
            "model": self.model,
            "score_kind": self.score_kind,
            "status": self.status,
            "degraded": self.degraded,
            "degraded_reasons": list(self.degraded_reasons),
            "usage": {**asdict(self.usage), "total_tokens": self.usage.total_tokens},
            "diagnostics": [asdict(d) for d in self.diagnostics],
            "order": self.indices,
            "dropped": [d.index for d in self.dropped],
        }

    def metadata(self, item: RankedDocument[Any]) -> dict[str, Any]:
        """The per-document fields the framework adapters attach to each returned document.

        ``relevance_score`` (the model's score, None when it gave none), ``rerank_rank``,
        ``rerank_score_kind``, ``rerank_fallback`` (this document kept a fallback place),
        ``rerank_degraded`` (the whole rerank degraded), and ``relevance_reason`` when there is one.
        """
        fields: dict[str, Any] = {
            "relevance_score": item.score,
            "rerank_rank": item.rank,
            "rerank_score_kind": self.score_kind,
            "rerank_fallback": item.fallback,
            "rerank_degraded": self.degraded,
        }
        if item.reason is not None:
            fields["relevance_reason"] = item.reason
        return fields
