"""Strategies by name: :data:`STRATEGIES` and :func:`make_strategy`.

:mod:`llmrerank.strategies` fills the table once every strategy is defined. A strategy that builds
another by name (the hybrid's LLM stage) imports this module, which imports no strategy, rather
than the package that imports every strategy: so no strategy imports its own package.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {}
"""Strategy classes by name (filled by :mod:`llmrerank.strategies`)."""


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
