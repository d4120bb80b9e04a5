"""Building a :class:`~llmrerank.Reranker` from flat settings, as the framework adapters expose them.

The LangChain compressor and the LlamaIndex postprocessor take the same fields (``strategy``,
``backend`` or ``model``, ``system_prompt``, ``template``, ``domain``, ...); the checks and the
construction live here once, so the adapters stay thin and agree with each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from .adaptive import DEFAULT_MAX_CONCURRENCY
from .backends.base import Backend
from .cache import ResponseCache
from .calibration import Calibration
from .diversity import MMR, Dedup, make_dedup
from .errors import ConfigurationError
from .fusion import Fusion, make_fusion
from .protocol import Context
from .reranker import OnError, Reranker, check_settings
from .routing import backend_for, default_backend
from .strategies import STRATEGIES, Hybrid, Strategy, make_strategy


@dataclass(frozen=True)
class RerankerSettings:
    """The flat settings an adapter exposes (every field of :data:`FIELDS`)."""

    strategy: str | Strategy | None = None
    """A strategy name or object; None: the backend's preferred one."""
    model: str | None = None
    """A model name for :func:`~llmrerank.routing.backend_for`, instead of a backend."""
    system_prompt: str | None = None
    """Replaces the system prompt of a strategy given by name."""
    template: str | None = None
    """Replaces the user prompt of a strategy given by name (its placeholders depend on it)."""
    # The rest as Reranker takes them (see its docstring).
    domain: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    on_error: OnError = "degrade"
    deadline: float | None = None
    cache: ResponseCache | Any = None
    min_score: float | None = None
    fusion: Fusion | str | None = "auto"
    calibration: str | Path | Calibration | None = None
    min_probability: float | None = None
    diversity: MMR | None = None
    dedup: Dedup | float | None = None

    def reranker_options(self) -> dict[str, Any]:
        """The settings :class:`~llmrerank.Reranker` takes as they are (all but strategy, model and prompts)."""
        return {name: getattr(self, name) for name in FIELDS if name not in _BUILD_ONLY}

    def check(self, backend: object | None) -> None:
        """Raise :class:`~llmrerank.errors.ConfigurationError` for settings that cannot work together."""
        options = self.reranker_options()
        check_settings(**{name: options[name] for name in _CHECKED})
        if self.model is not None and backend is not None:
            raise ConfigurationError("pass either model= or backend=, not both")
        self._check_strategy()
        if self.fusion != "auto":
            make_fusion(self.fusion)
        if self.min_probability is not None and self.calibration is None:
            raise ConfigurationError("min_probability needs calibration=FILE (fit one with: llmrerank calibrate)")
        if self.diversity is not None and not isinstance(self.diversity, MMR):
            raise ConfigurationError(f"diversity must be an llmrerank.MMR, got {type(self.diversity).__name__}")
        make_dedup(self.dedup)

    def _check_strategy(self) -> None:
        strategy = self.strategy
        if isinstance(strategy, str) and strategy.lower() not in STRATEGIES:
            raise ConfigurationError(f"unknown strategy {strategy!r}: use one of {sorted(STRATEGIES)}")
        if isinstance(strategy, Strategy) and (self.system_prompt or self.template):
            raise ConfigurationError("with a strategy object, set system_prompt/template on the object")
        if self.template is not None and strategy is None:
            raise ConfigurationError("template= needs strategy= (its placeholders depend on the strategy)")
        if self.min_score is not None and strategy is not None:
            chosen = make_strategy(strategy)
            if not isinstance(chosen, Hybrid) and not chosen.absolute_scores(Context()):
                raise ConfigurationError(f"min_score needs 0-10 scores; use strategy='pointwise', not {chosen.name!r}")

    def backend(self) -> Backend:
        """The backend ``model`` names (:func:`~llmrerank.routing.backend_for`), or with no ``model``
        the environment's (:func:`~llmrerank.routing.default_backend`)."""
        return backend_for(self.model) if self.model is not None else default_backend()

    def strategy_for(self, backend: Backend) -> str | Strategy:
        """``strategy`` (None: ``backend``'s preferred one), built with ``system_prompt``/``template`` when given."""
        chosen: str | Strategy = self.strategy or backend.preferred_strategy
        prompts = {"system_prompt": self.system_prompt, "template": self.template}
        given = {k: v for k, v in prompts.items() if v is not None}
        if given and isinstance(chosen, str):
            chosen = make_strategy(chosen, **given)
        return chosen


FIELDS = tuple(f.name for f in fields(RerankerSettings))
"""The settings an adapter passes through by name to :func:`check_options` and :func:`build_reranker`."""

_BUILD_ONLY = ("strategy", "model", "system_prompt", "template")
_CHECKED = ("max_concurrency", "on_error", "deadline", "domain", "cache", "min_score")
"""The settings :func:`~llmrerank.reranker.check_settings` checks on their own."""


def check_options(*, backend: object | None, **settings: Any) -> None:
    """Raise :class:`~llmrerank.errors.ConfigurationError` for settings (:data:`FIELDS`, by name)
    that cannot work together with ``backend``."""
    RerankerSettings(**settings).check(backend)


def build_reranker(backend: Backend | None, **settings: Any) -> Reranker:
    """A :class:`~llmrerank.Reranker` for these settings (:class:`RerankerSettings`, by name; checked with
    :func:`check_options` first).

    ``backend`` None: ``model`` picks the environment's API backend
    (:func:`~llmrerank.routing.backend_for`), and with no ``model``
    :func:`~llmrerank.default_backend` decides. ``strategy`` None: the backend's preferred one.
    ``system_prompt``/``template`` override the prompts of a strategy given by name.
    """
    chosen = RerankerSettings(**settings)
    chosen.check(backend)
    if backend is None:
        backend = chosen.backend()
    return Reranker(chosen.strategy_for(backend), backend, **chosen.reranker_options())


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
    changes (assignment or ``model_copy(update=...)``), and checks the settings together when the
    model is made. The model declares ``_slot: RerankerSlot = PrivateAttr(default_factory=RerankerSlot)``
    and sets :attr:`framework_backend`. Put it before the framework's base class.
    """

    _slot: RerankerSlot
    framework_backend: ClassVar[Callable[..., Backend]]
    """Wraps a framework's own model given as ``backend`` (``ChatModelBackend``, ``LlamaIndexLLMBackend``)."""

    def model_post_init(self, context: Any, /) -> None:
        """Check the settings together once pydantic has validated each (:func:`check_options`);
        pydantic raises the :class:`~llmrerank.errors.ConfigurationError` as its ``ValidationError``."""
        super().model_post_init(context)  # type: ignore[misc]
        check_options(backend=getattr(self, "backend", None), **self._options())

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
        """The ``backend`` field as an llmrerank backend (None: chosen by :func:`build_reranker`); a
        framework's model in :attr:`framework_backend`, with ``max_concurrency`` threads for its
        blocking calls."""
        backend = getattr(self, "backend", None)
        if backend is None or isinstance(backend, Backend):
            return backend
        return self.framework_backend(backend, max_workers=getattr(self, "max_concurrency", DEFAULT_MAX_CONCURRENCY))

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


__all__ = ["FIELDS", "LazyReranker", "RerankerSettings", "RerankerSlot", "build_reranker", "check_options"]
