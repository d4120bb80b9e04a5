"""Reranking strategies: pointwise, batch scoring, pairwise, setwise, listwise and hybrid."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import Context, Plan, Predict, Ranking, Strategy
from .batch_score import BatchScore
from .hybrid import Hybrid
from .listwise import Listwise
from .pairwise import Pairwise
from .pointwise import Pointwise
from .setwise import Setwise

STRATEGIES: dict[str, type[Strategy]] = {
    "pointwise": Pointwise,
    "pairwise": Pairwise,
    "listwise": Listwise,
    "hybrid": Hybrid,
    "batch_score": BatchScore,
    "setwise": Setwise,
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


__all__ = [
    "STRATEGIES",
    "BatchScore",
    "Context",
    "Hybrid",
    "Listwise",
    "Pairwise",
    "Plan",
    "Pointwise",
    "Predict",
    "Ranking",
    "Setwise",
    "Strategy",
    "make_strategy",
]
