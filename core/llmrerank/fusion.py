"""Fusion: combine the LLM's score with the first-stage (retriever) score of each document.

Retrievers already rank: BM25 and vector similarity carry evidence that a small reranker lacks,
and a weighted combination of the two often beats either alone. :class:`Fusion` says how;
:func:`fuse` applies it to a strategy's :class:`~llmrerank.protocol.Ranking` (pure: no I/O).
A :class:`~llmrerank.Reranker` built with ``fusion=`` takes the first-stage scores from the
documents themselves (:func:`first_stage_score`) or from ``rerank(..., first_stage_scores=[...])``.

Missing scores are never dropped silently: a document without a first-stage score counts as the
lowest-scored one (diagnostic ``first_stage_missing``). When no document has one (a LangChain
vector-store retriever puts none in the metadata), the order the documents came in is the
retriever's signal: fused as reciprocal ranks, ``1 / (rrf_k + rank)`` (the ``fused`` diagnostic
says so). Only when the LLM judged no document is fusion skipped (diagnostic ``fusion_skipped``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any, Literal

from .diagnostics import FIRST_STAGE_MISSING, FUSED, FUSION_SKIPPED
from .errors import ConfigurationError, InvalidInputError
from .protocol import Ranking
from .types import Diagnostic

Method = Literal["zscore", "minmax", "rrf"]
METHODS = ("zscore", "minmax", "rrf")
SCORE_KEYS = ("score", "relevance_score")
"""Where a document's first-stage score is looked for, in order (see :func:`first_stage_score`)."""


@dataclass(frozen=True)
class Fusion:
    """How to combine the LLM's score with the first-stage score.

    ``method``:

    - ``zscore``: each list of scores is standardised over the documents of the rerank (mean 0,
      standard deviation 1), then ``weight * llm + (1 - weight) * first_stage``;
    - ``minmax``: the same after scaling each list to [0, 1];
    - ``rrf``: weighted reciprocal-rank fusion, ``weight / (rrf_k + llm rank) + (1 - weight) /
      (rrf_k + first-stage rank)``: uses only the two orders.

    ``weight`` is the LLM's share (1: the LLM alone, 0: the retriever alone). ``keys`` name where
    :func:`first_stage_score` finds a document's score. Strategies without scores (listwise) take
    part with their order. The fused score has ``score_kind="fused"``.
    """

    method: Method = "zscore"
    weight: float = 0.5
    keys: tuple[str, ...] = SCORE_KEYS
    rrf_k: int = 60

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigurationError(f"fusion method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, Real) or not 0 <= self.weight <= 1:
            raise ConfigurationError(f"fusion weight must be a number in [0, 1], got {self.weight!r}")
        keys = (self.keys,) if isinstance(self.keys, str) else tuple(self.keys)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigurationError("fusion keys must be non-empty strings")
        object.__setattr__(self, "keys", keys)
        if self.rrf_k < 1:
            raise ConfigurationError("rrf_k must be >= 1")

    def describe(self) -> str:
        """One line for diagnostics and reports."""
        return f"{self.method}, LLM weight {self.weight:g}"


def make_fusion(fusion: Fusion | str | None) -> Fusion | None:
    """``fusion`` itself, a :class:`Fusion` with the named method, or None."""
    if fusion is None or isinstance(fusion, Fusion):
        return fusion
    if isinstance(fusion, str):
        return Fusion(method=fusion.strip().lower())  # type: ignore[arg-type]
    raise ConfigurationError(f"fusion must be a Fusion, a method name or None, got {type(fusion).__name__}")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None: not a number, NaN, infinite, or beyond a float's range
    (an int like ``10**400``, which ``float()`` refuses with OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


def first_stage_score(doc: Any, keys: Sequence[str] = SCORE_KEYS) -> float | None:
    """A document's first-stage score, or None when it has none (or it is not a finite number).

    Looked for, for each key in turn: a mapping's ``doc[key]``, an object's attribute (LlamaIndex
    ``NodeWithScore.score``), then the same key in ``doc["metadata"]`` / ``doc.metadata``
    (LangChain ``Document.metadata["score"]`` or ``["relevance_score"]``).
    """
    metadata = doc.get("metadata") if isinstance(doc, Mapping) else getattr(doc, "metadata", None)
    for key in keys:
        value = doc.get(key) if isinstance(doc, Mapping) else getattr(doc, key, None)
        if value is None and isinstance(metadata, Mapping):
            value = metadata.get(key)
        if value is not None:
            return _number(value)
    return None


def first_stage_scores(documents: Sequence[Any], keys: Sequence[str] = SCORE_KEYS) -> list[float | None]:
    """:func:`first_stage_score` of each document."""
    return [first_stage_score(doc, keys) for doc in documents]


def check_scores(values: Any, n: int) -> list[float | None]:
    """Explicit first-stage scores: one per document, each a number or None (NaN counts as None).

    Raises :class:`~llmrerank.errors.InvalidInputError` for a wrong length or a value that is not a number.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidInputError(f"first_stage_scores must be a list of numbers, got {type(values).__name__}")
    if len(values) != n:
        raise InvalidInputError(f"first_stage_scores has {len(values)} values for {n} documents")
    out: list[float | None] = []
    for i, value in enumerate(values):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
            raise InvalidInputError(f"first_stage_scores[{i}] is {type(value).__name__}, expected a number or None")
        out.append(None if value is None else _number(value))
    return out


def _standardised(values: list[float], method: str) -> list[float]:
    # Both methods ignore the scale, so dividing by the largest magnitude first changes nothing but
    # keeps every difference and square finite (1e200 - -1e200 and 1e200 ** 2 overflow).
    largest = max((abs(v) for v in values), default=0.0)
    if largest > 0:
        values = [v / largest for v in values]
    if method == "minmax":
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high > low else 0.0 for v in values]
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / spread if spread > 0 else 0.0 for v in values]


def _ranks(values: list[float]) -> list[int]:
    """1-based rank of each value, highest first; ties keep the input order."""
    ranks = [0] * len(values)
    for r, i in enumerate(sorted(range(len(values)), key=lambda i: (-values[i], i)), 1):
        ranks[i] = r
    return ranks


def llm_values(ranking: Ranking, judged: Sequence[int]) -> list[float]:
    """The LLM's side of the fusion for the ``judged`` documents (higher is better), in that order.

    The strategy's scores when it gave any; a judged document without one (beyond a hybrid's
    ``keep``) counts as the lowest. Rankings without scores (listwise, pairwise sort) take part
    with their order.
    """
    if ranking.score_kind in ("rank", "input_order") or not ranking.scores:
        position = {i: p for p, i in enumerate(ranking.order)}
        return [float(len(ranking.order) - position[i]) for i in judged]
    low = min(ranking.scores.values())
    return [ranking.scores.get(i, low) for i in judged]


def input_order_scores(n: int, rrf_k: int = 60) -> list[float | None]:
    """First-stage scores made from the input order when a retriever gave none: ``1 / (rrf_k + rank)``."""
    return [1.0 / (rrf_k + rank) for rank in range(1, n + 1)]


def fuse(ranking: Ranking, first_stage: Sequence[float | None], fusion: Fusion) -> Ranking:
    """A new :class:`Ranking` ordered by the fused score (``score_kind="fused"``).

    ``first_stage`` holds one score (or None) per document. Only documents the LLM judged take part:
    those whose call failed (:attr:`Ranking.unjudged`) keep their fallback places after them, with
    no score. A judged document without a first-stage score counts as the lowest (diagnostic
    ``first_stage_missing`` each). With no first-stage score at all, the input order stands in for
    them: the document at input position ``p`` (0-based) scores ``1 / (rrf_k + p + 1)``, the
    reciprocal rank, and the ``fused`` diagnostic names it. With nothing judged, the ranking is
    returned as it was with a ``fusion_skipped`` diagnostic. Ties keep the LLM's order.
    """
    n = len(ranking.order)
    if len(first_stage) != n:
        raise InvalidInputError(f"{len(first_stage)} first-stage scores for {n} documents")
    judged = [i for i in ranking.order if i not in ranking.unjudged]
    present = [first_stage[i] for i in judged if first_stage[i] is not None]
    diagnostics = list(ranking.diagnostics)
    if not judged:
        diagnostics.append(Diagnostic(FUSION_SKIPPED, "the LLM judged no document"))
        return replace(ranking, diagnostics=diagnostics)
    source = f"{len(present)} first-stage scores"
    if not present:
        first_stage = input_order_scores(n, fusion.rrf_k)
        present = [first_stage[i] for i in judged]
        source = (
            f"the input order as the retriever's (reciprocal rank 1/({fusion.rrf_k} + rank); no first-stage scores)"
        )
    low = min(s for s in present if s is not None)
    for i in judged:
        if first_stage[i] is None:
            diagnostics.append(Diagnostic(FIRST_STAGE_MISSING, "no first-stage score: counted as the lowest", i))
    retriever = [low if (s := first_stage[i]) is None else s for i in judged]
    llm = llm_values(ranking, judged)
    w = float(fusion.weight)
    if fusion.method == "rrf":
        k = fusion.rrf_k
        values = [w / (k + a) + (1 - w) / (k + b) for a, b in zip(_ranks(llm), _ranks(retriever), strict=True)]
    else:
        a_side, b_side = _standardised(llm, fusion.method), _standardised(retriever, fusion.method)
        values = [w * a + (1 - w) * b for a, b in zip(a_side, b_side, strict=True)]
    fused = dict(zip(judged, values, strict=True))
    position = {i: p for p, i in enumerate(ranking.order)}
    order = sorted(judged, key=lambda i: (-fused[i], position[i])) + [i for i in ranking.order if i in ranking.unjudged]
    diagnostics.append(Diagnostic(FUSED, f"{fusion.describe()} with {source}"))
    return replace(ranking, order=order, score_kind="fused", scores=fused, diagnostics=diagnostics)


__all__ = [
    "METHODS",
    "SCORE_KEYS",
    "Fusion",
    "check_scores",
    "first_stage_score",
    "first_stage_scores",
    "fuse",
    "input_order_scores",
    "llm_values",
    "make_fusion",
]
