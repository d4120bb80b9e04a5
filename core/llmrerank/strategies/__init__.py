"""Reranking strategies: pointwise, batch scoring, pairwise, setwise, listwise, top-down partitioning, hybrid and
query likelihood."""

from __future__ import annotations

from ..protocol import Context
from .base import Likelihood, Plan, Predict, Strategy
from .batch_score import BatchScore
from .hybrid import Hybrid
from .listwise import Listwise
from .pairwise import Pairwise
from .pointwise import Pointwise
from .query_likelihood import QueryLikelihood
from .registry import STRATEGIES, make_strategy
from .setwise import Setwise
from .topdown import TopDown

# Filled here, where every strategy is defined; the hybrid strategy reads it through registry.py.
STRATEGIES.update(
    {
        "pointwise": Pointwise,
        "pairwise": Pairwise,
        "listwise": Listwise,
        "hybrid": Hybrid,
        "batch_score": BatchScore,
        "setwise": Setwise,
        "query_likelihood": QueryLikelihood,
        "topdown": TopDown,
    }
)


def uses_likelihood(strategy: Strategy, preferred: str) -> bool:
    """Whether running ``strategy`` yields :class:`Likelihood` steps (its
    :attr:`~Strategy.yields_likelihood`, or for a hybrid its LLM strategy's; a hybrid without
    ``llm`` runs ``preferred``)."""
    if isinstance(strategy, Hybrid):
        return strategy.inner(Context(preferred_strategy=preferred)).yields_likelihood
    return strategy.yields_likelihood


__all__ = [
    "STRATEGIES",
    "BatchScore",
    "Hybrid",
    "Likelihood",
    "Listwise",
    "Pairwise",
    "Plan",
    "Pointwise",
    "Predict",
    "QueryLikelihood",
    "Setwise",
    "Strategy",
    "TopDown",
    "make_strategy",
    "uses_likelihood",
]
