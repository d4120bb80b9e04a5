"""Building a :class:`~llmrerank.Reranker` from flat settings, as the framework adapters expose them.

The LangChain compressor and the LlamaIndex postprocessor take the same fields (``strategy``,
``backend`` or ``model``, ``system_prompt``, ``template``, ``domain``, ...); the checks and the
construction live here once, so the adapters stay thin and agree with each other.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .adaptive import DEFAULT_MAX_CONCURRENCY
from .backends.base import Backend
from .cache import ResponseCache
from .calibration import Calibration
from .diversity import MMR, Dedup, make_dedup
from .errors import ConfigurationError
from .fusion import Fusion, make_fusion
from .protocol import Context
from .reranker import OnError, Reranker, check_settings, default_backend
from .strategies import STRATEGIES, Hybrid, Strategy, make_strategy

FIELDS = (
    "strategy",
    "model",
    "system_prompt",
    "template",
    "domain",
    "max_concurrency",
    "on_error",
    "deadline",
    "cache",
    "min_score",
    "fusion",
    "calibration",
    "min_probability",
    "diversity",
    "dedup",
)
"""The settings an adapter passes through by name to :func:`check_options` and :func:`build_reranker`."""


def check_options(
    *,
    backend: object | None,
    strategy: str | Strategy | None = None,
    model: str | None = None,
    system_prompt: str | None = None,
    template: str | None = None,
    domain: str | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    on_error: str = "degrade",
    deadline: float | None = None,
    cache: object | None = None,
    min_score: float | None = None,
    fusion: object = "auto",
    calibration: object = None,
    min_probability: float | None = None,
    diversity: object = None,
    dedup: object = None,
) -> None:
    """Raise :class:`~llmrerank.errors.ConfigurationError` for settings that cannot work together."""
    check_settings(
        max_concurrency=max_concurrency,
        on_error=on_error,
        deadline=deadline,
        domain=domain,
        cache=cache,
        min_score=min_score,
    )
    if model is not None and backend is not None:
        raise ConfigurationError("pass either model= or backend=, not both")
    if isinstance(strategy, str) and strategy.lower() not in STRATEGIES:
        raise ConfigurationError(f"unknown strategy {strategy!r}: use one of {sorted(STRATEGIES)}")
    if isinstance(strategy, Strategy) and (system_prompt or template):
        raise ConfigurationError("with a strategy object, set system_prompt/template on the object")
    if template is not None and strategy is None:
        raise ConfigurationError("template= needs strategy= (its placeholders depend on the strategy)")
    if min_score is not None and strategy is not None:
        chosen = make_strategy(strategy)
        if not isinstance(chosen, Hybrid) and not chosen.absolute_scores(Context()):
            raise ConfigurationError(f"min_score needs 0-10 scores; use strategy='pointwise', not {chosen.name!r}")
    if fusion != "auto":
        make_fusion(fusion)  # type: ignore[arg-type]
    if min_probability is not None and calibration is None:
        raise ConfigurationError("min_probability needs calibration=FILE (fit one with: llmrerank calibrate)")
    if diversity is not None and not isinstance(diversity, MMR):
        raise ConfigurationError(f"diversity must be an llmrerank.MMR, got {type(diversity).__name__}")
    make_dedup(dedup)  # type: ignore[arg-type]


def api_backend(model: str) -> Backend:
    """The backend serving ``model`` (:func:`~llmrerank.routing.backend_for`): ``"openai:gpt-4.1-mini"``,
    ``"anthropic:claude-haiku-4-5"``, or a bare name by its prefix (``gpt-``/``o3``... OpenAI,
    ``claude-`` Anthropic), else the environment's one API key; a :class:`ConfigurationError` naming
    the environment variable when the provider's key is missing."""
    from .routing import backend_for

    return backend_for(model)


def build_reranker(
    backend: Backend | None,
    *,
    strategy: str | Strategy | None = None,
    model: str | None = None,
    system_prompt: str | None = None,
    template: str | None = None,
    domain: str | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    on_error: OnError = "degrade",
    deadline: float | None = None,
    cache: ResponseCache | Any = None,
    min_score: float | None = None,
    fusion: Fusion | str | None = "auto",
    calibration: str | Path | Calibration | None = None,
    min_probability: float | None = None,
    diversity: MMR | None = None,
    dedup: Dedup | float | None = None,
) -> Reranker:
    """A :class:`~llmrerank.Reranker` for these settings (checked with :func:`check_options` first).

    ``backend`` None: ``model`` picks the environment's API backend (:func:`api_backend`), and with
    no ``model`` :func:`~llmrerank.default_backend` decides. ``strategy`` None: the backend's
    preferred one. ``system_prompt``/``template`` override the prompts of a strategy given by name.
    """
    check_options(
        backend=backend,
        strategy=strategy,
        model=model,
        system_prompt=system_prompt,
        template=template,
        domain=domain,
        max_concurrency=max_concurrency,
        on_error=on_error,
        deadline=deadline,
        cache=cache,
        min_score=min_score,
        fusion=fusion,
        calibration=calibration,
        min_probability=min_probability,
        diversity=diversity,
        dedup=dedup,
    )
    if backend is None:
        backend = api_backend(model) if model is not None else default_backend()
    chosen: str | Strategy = strategy or backend.preferred_strategy
    overrides = {"system_prompt": system_prompt, "template": template}
    options = {k: v for k, v in overrides.items() if v is not None}
    if options and isinstance(chosen, str):
        chosen = make_strategy(chosen, **options)
    return Reranker(
        chosen,
        backend,
        domain=domain,
        max_concurrency=max_concurrency,
        on_error=on_error,
        deadline=deadline,
        cache=cache,
        min_score=min_score,
        fusion=fusion,
        calibration=calibration,
        min_probability=min_probability,
        diversity=diversity,
        dedup=dedup,
    )


class RerankerSlot:
    """Holds an adapter's lazily built :class:`~llmrerank.Reranker` and the lock that guards it.

    Copies and unpickled objects start empty, so a copied adapter rebuilds from its own fields
    (and never shares a lock or a stale reranker with the original).
    """

    def __init__(self) -> None:
        self.reranker: Reranker | None = None
        self.lock = threading.Lock()

    def __copy__(self) -> RerankerSlot:
        return RerankerSlot()

    def __deepcopy__(self, memo: dict[int, Any]) -> RerankerSlot:
        return RerankerSlot()

    def __reduce__(self) -> tuple[type[RerankerSlot], tuple[()]]:
        return (RerankerSlot, ())


class LazyReranker:
    """Mixin for an adapter's pydantic model with the :data:`FIELDS` settings and a ``backend`` field.

    Gives it :attr:`reranker`, built from the fields on first use and rebuilt after a field
    changes (assignment or ``model_copy(update=...)``). The model declares
    ``_slot: RerankerSlot = PrivateAttr(default_factory=RerankerSlot)`` and may override
    :meth:`_backend` to wrap a framework's own LLM in an llmrerank backend. Put it before the
    framework's base class.
    """

    _slot: RerankerSlot

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in getattr(type(self), "model_fields", {}):
            self._slot = RerankerSlot()  # rebuild the reranker from the new settings

    def __copy__(self) -> Any:
        clone = super().__copy__()  # type: ignore[misc]
        clone._slot = RerankerSlot()  # model_copy(update=...) changes fields behind __setattr__'s back
        return clone

    def _options(self) -> dict[str, Any]:
        """The :data:`FIELDS` settings, by name."""
        return {name: getattr(self, name) for name in FIELDS}

    def _backend(self) -> Backend | None:
        """The ``backend`` field as an llmrerank backend (None: chosen by :func:`build_reranker`)."""
        backend: Backend | None = getattr(self, "backend", None)
        return backend

    def close(self) -> None:
        """Close the reranker's backend connections, if the reranker was built (:meth:`Reranker.close`)."""
        if self._slot.reranker is not None:
            self._slot.reranker.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        if self._slot.reranker is not None:
            await self._slot.reranker.aclose()

    @property
    def reranker(self) -> Reranker:
        """The :class:`~llmrerank.Reranker` built from the fields on first use (again after a field changes)."""
        slot = self._slot
        with slot.lock:
            if slot.reranker is None:
                slot.reranker = build_reranker(self._backend(), **self._options())
            return slot.reranker


__all__ = ["FIELDS", "LazyReranker", "RerankerSlot", "api_backend", "build_reranker", "check_options"]
