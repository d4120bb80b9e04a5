"""Reranking strategies: pointwise, batch scoring, pairwise, setwise, listwise, top-down partitioning, hybrid and
query likelihood."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from ..protocol import Context
from .base import Likelihood, Plan, Predict, Strategy
from .batch_score import BatchScore
from .hybrid import Hybrid
from .listwise import Listwise
from .pairwise import Pairwise
from .pointwise import Pointwise
from .query_likelihood import QueryLikelihood
from .setwise import Setwise
from .topdown import TopDown

STRATEGIES: dict[str, type[Strategy]] = {
    "pointwise": Pointwise,
    "pairwise": Pairwise,
    "listwise": Listwise,
    "hybrid": Hybrid,
    "batch_score": BatchScore,
    "setwise": Setwise,
    "query_likelihood": QueryLikelihood,
    "topdown": TopDown,
}
"""Strategy classes by name."""


def make_strategy(strategy: str | Strategy, **options: Any) -> Strategy:
    """Return ``strategy`` itself, or build the named one with ``options``."""
    if isinstance(strategy, Strategy):
        if options:
            raise ConfigurationError("options are for a strategy given by name; set them on the object")
        return strategy
    if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
        raise ConfigurationError(f"unknown strategy {strategy!r}: use one of {sorted(STRATEGIES)} or a Strategy")
    try:
        return STRATEGIES[strategy.lower()](**options)
    except TypeError as exc:
        raise ConfigurationError(f"bad option for {strategy}: {exc}") from exc


def uses_likelihood(strategy: Strategy, preferred: str) -> bool:
    """Whether ``strategy`` yields :class:`Likelihood` steps; a hybrid without ``llm`` runs ``preferred``."""
    if isinstance(strategy, Hybrid):
        return strategy.inner(Context(preferred_strategy=preferred)).uses_likelihood
    return strategy.uses_likelihood


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
