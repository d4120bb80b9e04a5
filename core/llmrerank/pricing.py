"""Estimated LLM cost: a per-model price table (USD per 1M tokens) and :func:`estimate_cost`.

The built-in prices are list prices for standard (non-batch, uncached) API calls as of
:data:`PRICES_AS_OF`; providers change them, so every figure computed here is an *estimate*.
Override or extend the table with a dict or a JSON file::

    {"my-model": {"input": 0.5, "output": 1.5}, "gpt-4o-mini": [0.15, 0.6]}

Model names match exactly, else by the longest known prefix, so dated snapshots such as
``gpt-4o-mini-2024-07-18`` or ``claude-haiku-4-5-20251001`` find their family's price.

The built-in list prices apply to the providers' own APIs only: a server of your own (vLLM,
Ollama, llama.cpp) or another OpenAI-compatible endpoint gets no price, shown as n/a with the
reason (:func:`cost_basis`), unless your own table names its model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .backends.servers import PROVIDER_HOSTS, is_local_url, is_provider_api
from .errors import ConfigurationError
from .types import Usage

PRICES_AS_OF = "2025-11"
"""When the built-in prices were last checked against the providers' pricing pages."""


@dataclass(frozen=True)
class Price:
    """USD per one million tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the given token counts."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


PRICES: Mapping[str, Price] = {
    # OpenAI
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5": Price(1.25, 10.00),
    "o4-mini": Price(1.10, 4.40),
    "o3": Price(2.00, 8.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    # Anthropic
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-opus-4-5": Price(5.00, 25.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-haiku": Price(0.25, 1.25),
    # Runs on your own machine, or in tests
    "local": Price(0.0, 0.0),
    "fake": Price(0.0, 0.0),
}
"""Built-in prices, USD per 1M input / output tokens, as of :data:`PRICES_AS_OF`."""

FREE_BACKENDS = frozenset({"local", "fake"})
"""Backend names whose calls cost nothing whatever the model is called."""

PriceSource = Union[Mapping[str, Any], str, Path, None]  # noqa: UP007 - a runtime alias, kept valid on 3.10


def _price(name: str, value: Any) -> Price:
    if isinstance(value, Price):
        return value
    try:
        if isinstance(value, Mapping):
            return Price(float(value["input"]), float(value["output"]))
        inp, out = value
        return Price(float(inp), float(out))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"bad price for {name!r}: {value!r}; use {{'input': USD, 'output': USD}} per 1M tokens"
        ) from exc


def _read(source: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if not isinstance(source, str | Path):
        return source
    try:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the price file {source}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"the price file {source} must hold a JSON object of model -> price")
    return data


def load_prices(source: PriceSource = None) -> dict[str, Price]:
    """The built-in table updated with ``source``: a mapping, or the path of a JSON file holding one."""
    table = dict(PRICES)
    if source is None:
        return table
    table.update({str(name).lower(): _price(str(name), value) for name, value in _read(source).items()})
    return table


def price_of(model: str | None, prices: PriceSource = None) -> Price | None:
    """The price of ``model``: an exact match, else the longest known prefix, else None."""
    if not model:
        return None
    table = load_prices(prices)
    key = _match(_model_key(model), table)
    return None if key is None else table[key]


def _model_key(model: str) -> str:
    """How a model name is looked up: lower case, without an ``org/`` prefix."""
    return model.lower().rsplit("/", 1)[-1]


def _match(name: str, keys: Iterable[str]) -> str | None:
    """The key ``name`` is priced by: itself, else the longest key it starts with, else None."""
    keys = list(keys)
    if name in keys:
        return name
    prefixes = [key for key in keys if name.startswith(key)]
    return max(prefixes, key=len) if prefixes else None


def cost_basis(
    model: str | None, prices: PriceSource = None, *, backend: str | None = None, server_url: str | None = None
) -> tuple[Price | None, str]:
    """The price that applies to ``model`` and a note saying why (``n/a: ...`` when none does).

    ``backend`` ``"local"`` or ``"fake"`` is free. A model your own ``prices`` name is priced
    wherever it runs. The built-in table applies only to the provider's own API: ``server_url``
    (the backend's base URL; None is the provider's default) on this machine or a private network
    is a server of your own, any other host another provider's endpoint; both get no price.
    """
    if backend in FREE_BACKENDS:
        return Price(0.0, 0.0), f"{backend} backend: no charge"
    if not model:
        return None, "n/a: no model name"
    data = {} if prices is None else _read(prices)  # a price file is read once
    if _match(_model_key(model), (str(k).lower() for k in data)) is not None:
        return price_of(model, data), "your price table"
    if backend in PROVIDER_HOSTS and not is_provider_api(backend, server_url):
        where = "a server of your own" if is_local_url(server_url) else "an API other than " + PROVIDER_HOSTS[backend]
        return None, f"n/a: {where} at {server_url}; list prices do not apply (give yours with prices= / --prices)"
    price = price_of(model, data)
    if price is None:
        return None, f"n/a: no known price for model {model!r} (give one with prices= / --prices)"
    return price, f"estimated, prices as of {PRICES_AS_OF}"


def estimate_cost(
    model: str | None,
    usage: Usage,
    prices: PriceSource = None,
    *,
    backend: str | None = None,
    server_url: str | None = None,
) -> float | None:
    """Estimated USD for ``usage`` on ``model``; None when no price applies (see :func:`cost_basis`).

    Calls answered from the cache carry no tokens and cost nothing. ``backend`` ``"local"`` or
    ``"fake"`` always costs 0; a server of your own (``server_url`` local) has no price.
    """
    price, _ = cost_basis(model, prices, backend=backend, server_url=server_url)
    if price is None:
        return None
    return price.cost(usage.prompt_tokens, usage.completion_tokens)


__all__ = [
    "FREE_BACKENDS",
    "PRICES",
    "PRICES_AS_OF",
    "PROVIDER_HOSTS",
    "Price",
    "cost_basis",
    "estimate_cost",
    "load_prices",
    "price_of",
]
