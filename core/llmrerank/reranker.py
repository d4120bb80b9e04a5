"""The entry point: :class:`Reranker`."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from .backends.base import Backend, Closing
from .cache import ResponseCache
from .driver import Driver, OnError
from .errors import ConfigurationError, InvalidInputError
from .limits import Limiter
from .prompts import clean_query, domain_instruction
from .runner import run_blocking
from .strategies import Strategy, make_strategy
from .strategies.base import Context, Ranking
from .types import (
    Diagnostic,
    RankedDocument,
    RerankResult,
    check_query,
    check_top_k,
    document_list,
    normalize_documents,
)

logger = logging.getLogger("llmrerank")


def default_backend() -> Backend:
    """The backend used when none is given.

    ``OPENAI_API_KEY`` set: OpenAI ``gpt-4o-mini`` (``OPENAI_BASE_URL`` honoured by the SDK);
    else ``ANTHROPIC_API_KEY``: Anthropic Haiku; else the local demo model, with one log line.
    """
    if os.environ.get("OPENAI_API_KEY"):
        from .backends.openai import OpenAIBackend

        return OpenAIBackend()
    if os.environ.get("ANTHROPIC_API_KEY"):
        from .backends.anthropic import AnthropicBackend

        return AnthropicBackend()
    from .backends.local import LocalBackend

    logger.warning(
        "llmrerank: no OPENAI_API_KEY or ANTHROPIC_API_KEY; using the small local demo model "
        "SmolLM2-135M-Instruct (fine for trying things, weak for real ranking)"
    )
    return LocalBackend()


def check_settings(
    *,
    max_concurrency: int,
    on_error: str,
    deadline: float | None,
    domain: str | None,
    strict: bool = False,
    cache: object | None = None,
) -> None:
    """Raise :class:`~llmrerank.errors.ConfigurationError` for a :class:`Reranker` setting of the wrong
    type or out of range (``max_concurrency="8"``, ``domain=5``, ``deadline=float("nan")``, ``True``
    where a number is expected)."""
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ConfigurationError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
    if not isinstance(on_error, str) or on_error not in ("degrade", "raise"):
        raise ConfigurationError(f"on_error must be 'degrade' or 'raise', got {on_error!r}")
    if deadline is not None and not (_is_real(deadline) and 0 < deadline < math.inf):
        raise ConfigurationError(f"deadline must be a finite number of seconds > 0 (or None), got {deadline!r}")
    if domain is not None and not isinstance(domain, str):
        raise ConfigurationError(f"domain must be a str or None, got {type(domain).__name__}")
    if not isinstance(strict, bool):
        raise ConfigurationError(f"strict must be True or False, got {strict!r}")
    if cache is not None and not (callable(getattr(cache, "get", None)) and callable(getattr(cache, "set", None))):
        raise ConfigurationError("cache must have get() and set(), e.g. llmrerank.MemoryCache()")
    domain_instruction(domain)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Reranker(Closing):
    """Reorder documents by relevance to a query with an LLM.

    >>> r = Reranker(strategy="listwise", backend=OpenAIBackend(model="gpt-4o-mini"))  # doctest: +SKIP
    >>> result = r.rerank("what is BM25?", docs, top_k=5)                               # doctest: +SKIP

    ``strategy``: ``"pointwise"``, ``"pairwise"``, ``"listwise"``, ``"hybrid"`` or a strategy object
    (for options); None picks the backend's preferred one (listwise for API models, pointwise with
    log-probs for the local model). ``backend``: None picks one from the environment
    (:func:`default_backend`). ``domain``: ``"legal"``, ``"medical"``, ``"ecommerce"`` or your own
    instruction. ``max_concurrency`` bounds LLM calls in flight across all concurrent reranks of
    this object. ``on_error="degrade"`` (default) returns a fallback order with ``degraded=True``
    when calls fail; ``"raise"`` raises the typed error. ``strict=True`` raises
    :class:`~llmrerank.errors.ParseError` on unreadable output instead of falling back.
    ``deadline`` bounds one rerank in seconds. ``cache``: a :class:`~llmrerank.cache.MemoryCache`,
    :class:`~llmrerank.cache.DiskCache` or anything with ``get``/``set``.
    """

    def __init__(
        self,
        strategy: str | Strategy | None = None,
        backend: Backend | None = None,
        *,
        domain: str | None = None,
        max_concurrency: int = 8,
        on_error: OnError = "degrade",
        strict: bool = False,
        deadline: float | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        check_settings(
            max_concurrency=max_concurrency,
            on_error=on_error,
            deadline=deadline,
            domain=domain,
            strict=strict,
            cache=cache,
        )
        if backend is not None and not isinstance(backend, Backend):
            raise ConfigurationError(f"backend must be a llmrerank Backend, got {type(backend).__name__}")
        self.backend = backend if backend is not None else default_backend()
        self.strategy = make_strategy(strategy or self.backend.preferred_strategy)
        self.domain = domain
        self.max_concurrency = max_concurrency
        self.on_error = on_error
        self.strict = strict
        self.deadline = deadline
        self.cache = cache
        self._limits = Limiter(max_concurrency)

    def __repr__(self) -> str:
        return f"Reranker(strategy={self.strategy!r}, backend={self.backend!r})"

    def _limiter(self) -> Limiter:
        # One bound for every thread and event loop this reranker is used from.
        return self._limits

    async def aclose(self) -> None:
        """Close the backend's clients and connections (:meth:`Backend.aclose`); the reranker stays usable."""
        await self.backend.aclose()

    def close(self) -> None:
        """Blocking :meth:`aclose`."""
        self.backend.close()

    async def arerank(self, query: str, documents: Sequence[Any], top_k: int | None = None) -> RerankResult:
        """Rerank ``documents`` for ``query``; return the best ``top_k`` (all when None).

        ``documents`` may be strings, dicts with ``content`` or ``text`` (plus ``id``/``metadata``),
        or objects with ``page_content`` or ``text``; results hold the caller's own objects.

        Input rules: an empty list gives an empty result without any LLM call; a blank or
        non-string query, None (as the list or as an item), a dict without text, a bare number
        and a ``top_k`` that is not a positive int raise
        :class:`~llmrerank.errors.InvalidInputError` before any call. ``top_k`` larger than the
        list returns everything. Duplicate documents are kept, each with its own index. Texts
        longer than the strategy's ``max_doc_chars`` are cut (diagnostic ``truncated``); control
        and invisible characters and imitation ``<document>`` tags are neutralised in prompts
        (:func:`~llmrerank.prompts.sanitize`), while results hold the caller's objects unchanged.
        """
        started = time.perf_counter()
        query = check_query(query)
        top_k = check_top_k(top_k)
        originals = document_list(documents)
        docs = normalize_documents(originals)
        prompt_query = clean_query(query)
        if not prompt_query:
            raise InvalidInputError("query is empty once control and invisible characters are removed")
        name = self.strategy.name
        if not docs:
            return RerankResult((), query, name, "input_order")
        driver = Driver(self.backend, self._limiter(), on_error=self.on_error, deadline=self.deadline, cache=self.cache)
        ctx = Context(
            top_k=top_k,
            supports_logprobs=self.backend.supports_logprobs,
            strict=self.strict,
            domain=self.domain,
            pointwise_method=getattr(self.backend, "pointwise_method", "expected"),
            preferred_strategy=self.backend.preferred_strategy,
        )
        ranking = await driver.run(self.strategy.plan(prompt_query, docs, ctx))
        ranking = _complete(ranking, len(docs))
        meter = driver.meter
        degraded = (
            meter.failed_calls > 0
            or meter.deadline_hit
            or any(d.code == "prefilter_failed" for d in ranking.diagnostics)
        )
        diagnostics = list(ranking.diagnostics)
        if meter.deadline_hit:
            diagnostics.append(Diagnostic("deadline_exceeded", f"deadline of {self.deadline}s passed"))
        if meter.circuit_open:
            diagnostics.append(Diagnostic("circuit_open", "calls kept timing out; the rest were not sent"))
        if degraded:
            logger.warning(
                "llmrerank: %s rerank degraded (%d of %d calls failed); fallback order used",
                name,
                meter.failed_calls,
                max(meter.calls, meter.failed_calls),
            )
        by_index: dict[int, list[Diagnostic]] = {}
        for d in diagnostics:
            if d.index is not None:
                by_index.setdefault(d.index, []).append(d)
        kept = ranking.order[:top_k] if top_k else ranking.order
        items = tuple(
            RankedDocument(
                index=i,
                document=originals[i],
                score=ranking.scores.get(i),
                rank=r + 1,
                reason=ranking.reasons.get(i),
                diagnostics=tuple(by_index.get(i, ())),
            )
            for r, i in enumerate(kept)
        )
        return RerankResult(
            items=items,
            query=query,
            strategy=name,
            score_kind=ranking.score_kind,
            usage=meter.usage(time.perf_counter() - started),
            diagnostics=tuple(diagnostics),
            degraded=degraded,
        )

    def rerank(self, query: str, documents: Sequence[Any], top_k: int | None = None) -> RerankResult:
        """Blocking :meth:`arerank`; also safe inside a running event loop.

        It runs on llmrerank's one background event loop (:mod:`llmrerank.runner`), so the
        backend's HTTP client and connections are reused from one call to the next.
        """
        return run_blocking(self.arerank(query, documents, top_k))


def _complete(ranking: Ranking, n: int) -> Ranking:
    """Guard the never-lose-a-document promise against a faulty custom strategy."""
    order = list(dict.fromkeys(i for i in ranking.order if 0 <= i < n))
    if len(order) < n:
        seen = set(order)
        ranking.diagnostics.append(
            Diagnostic("strategy_repaired", f"strategy returned {len(order)} of {n} documents; rest appended")
        )
        order += [i for i in range(n) if i not in seen]
    ranking.order = order
    return ranking
