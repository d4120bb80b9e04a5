"""The entry point: :class:`Reranker`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

from .adaptive import DEFAULT_MAX_CONCURRENCY, AdaptiveLimiter
from .backends.base import Backend, Closing
from .cache import ResponseCache
from .calibration import Calibration, calibrate_ranking, load_calibration
from .diversity import MMR, Dedup, check_mmr, diversify, make_dedup
from .driver import Driver, Meter, OnError
from .errors import ConfigurationError, InvalidInputError
from .fusion import Fusion, check_scores, first_stage_score, fuse, make_fusion
from .inputs import check_query, check_top_k, document_list, is_number, normalize_documents
from .outcome import assess, build_result, complete, drop_below, ranked_documents, unreadable_quotes
from .prompts import MEASURED_SHARE, clean_query, clip, domain_instruction
from .protocol import Context, Ranking
from .routing import backend_for, default_backend
from .runner import blocking
from .strategies import Strategy, make_strategy, uses_likelihood
from .telemetry import rerank_span
from .types import D, Document, RerankResult

logger = logging.getLogger("llmrerank")

MEASURE_CHARS = 32_000
"""The most characters of a rerank's texts its one tokenizer request counts."""

ON_ERROR: tuple[str, ...] = get_args(OnError)
"""The values of ``on_error`` (see :data:`~llmrerank.driver.OnError`)."""


def check_settings(
    *,
    max_concurrency: int,
    on_error: str,
    deadline: float | None,
    domain: str | None,
    strict: bool = False,
    cache: object | None = None,
    min_score: float | None = None,
) -> None:
    """Raise :class:`~llmrerank.errors.ConfigurationError` for a :class:`Reranker` setting of the wrong
    type or out of range (``max_concurrency="8"``, ``domain=5``, ``deadline=float("nan")``, ``True``
    where a number is expected)."""
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ConfigurationError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
    if not isinstance(on_error, str) or on_error not in ON_ERROR:
        raise ConfigurationError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if deadline is not None and not (is_number(deadline) and 0 < deadline < math.inf):
        raise ConfigurationError(f"deadline must be a finite number of seconds > 0 (or None), got {deadline!r}")
    if domain is not None and not isinstance(domain, str):
        raise ConfigurationError(f"domain must be a str or None, got {type(domain).__name__}")
    if not isinstance(strict, bool):
        raise ConfigurationError(f"strict must be True or False, got {strict!r}")
    if cache is not None and not (callable(getattr(cache, "get", None)) and callable(getattr(cache, "set", None))):
        raise ConfigurationError("cache must have get() and set(), e.g. llmrerank.MemoryCache()")
    check_min_score(min_score)
    domain_instruction(domain)


def check_min_score(min_score: float | None) -> None:
    """Raise :class:`~llmrerank.errors.ConfigurationError` unless ``min_score`` is None or a number in 0-10."""
    if min_score is not None and not (is_number(min_score) and 0 <= min_score <= 10):
        raise ConfigurationError(f"min_score must be a number from 0 to 10, got {min_score!r}")


class Reranker(Closing):
    """Reorder documents by relevance to a query with an LLM.

    >>> r = Reranker(strategy="listwise", backend=OpenAIBackend(model="gpt-4o-mini"))  # doctest: +SKIP
    >>> result = r.rerank("what is BM25?", docs, top_k=5)                               # doctest: +SKIP

    Args:
        strategy: ``"pointwise"``, ``"batch_score"``, ``"pairwise"``, ``"setwise"``, ``"listwise"``,
            ``"topdown"``, ``"hybrid"``, ``"query_likelihood"`` or a strategy object (for options).
            None picks the backend's preferred one: listwise for API models, query likelihood for
            the local model.
        backend: A backend; a model name routed to its provider (``"openai:gpt-4.1-mini"``,
            ``"anthropic:claude-haiku-4-5"``, ``"claude-haiku-4-5"``: see
            :func:`~llmrerank.routing.backend_for`); or None to pick one from the environment
            (:func:`default_backend`).
        domain: ``"legal"``, ``"medical"``, ``"ecommerce"`` or your own instruction.
        max_concurrency: The most LLM calls in flight across all concurrent reranks of this object
            (default 32). The bound adapts below it, halving on rate limits (429) and growing back
            as calls succeed (:mod:`llmrerank.adaptive`).
        on_error: What a failed LLM call does (:data:`~llmrerank.driver.OnError`). ``"degrade"``
            (default) returns a fallback order with ``degraded=True`` when calls fail for a passing
            reason (429, 5xx, timeouts) and raises for a permanent one (bad key, unknown model, bad
            request); ``"degrade_all"`` degrades on both; ``"raise"`` raises the typed error for any
            failure.
        strict: True raises :class:`~llmrerank.errors.ParseError` on unreadable output instead of
            falling back.
        deadline: Seconds one rerank may take.
        cache: A :class:`~llmrerank.cache.MemoryCache`, :class:`~llmrerank.cache.DiskCache` or
            anything with ``get``/``set``.
        fusion: Combines the LLM's score with each document's first-stage score (a dict's
            ``"score"``, an object's ``score`` such as LlamaIndex's ``NodeWithScore``, LangChain
            ``metadata["score"]`` / ``["relevance_score"]``, or ``rerank(..., first_stage_scores=...)``);
            ``score_kind`` is then ``"fused"``. A :class:`~llmrerank.fusion.Fusion` or its method
            name (``"zscore"``, ``"minmax"``, ``"rrf"``); ``"auto"`` (default): the backend's
            ``preferred_fusion`` when the strategy is the backend's preferred one, else none; None:
            never.
        min_score: Drops the documents the model rated below it (0-10) into
            :attr:`~llmrerank.types.RerankResult.dropped`; only for strategies whose scores are 0-10
            ratings (pointwise, or hybrid over pointwise).
        calibration: A calibration file (``llmrerank calibrate``) or a
            :class:`~llmrerank.calibration.Calibration` holding a map for this backend's model and
            this strategy: scores become P(relevant) in [0, 1] (``score_kind="probability"``; the
            order is kept, and ``fusion="auto"`` means none).
        min_probability: With ``calibration``: drops documents less likely relevant than this into
            :attr:`~llmrerank.types.RerankResult.dropped`.
        diversity: An :class:`~llmrerank.diversity.MMR`: reorders the result by maximal marginal
            relevance.
        dedup: A cosine threshold such as 0.95, or a :class:`~llmrerank.diversity.Dedup`: drops
            near-duplicates of better-ranked documents into ``dropped`` with a ``duplicate``
            diagnostic (:mod:`llmrerank.diversity`).
    """

    def __init__(
        self,
        strategy: str | Strategy | None = None,
        backend: Backend | str | None = None,
        *,
        domain: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        on_error: OnError = "degrade",
        strict: bool = False,
        deadline: float | None = None,
        cache: ResponseCache | None = None,
        fusion: Fusion | str | None = "auto",
        min_score: float | None = None,
        calibration: str | Path | Calibration | None = None,
        min_probability: float | None = None,
        diversity: MMR | None = None,
        dedup: Dedup | float | None = None,
    ) -> None:
        check_settings(
            max_concurrency=max_concurrency,
            on_error=on_error,
            deadline=deadline,
            domain=domain,
            strict=strict,
            cache=cache,
        )
        if isinstance(backend, str):
            backend = backend_for(backend)
        if backend is not None and not isinstance(backend, Backend):
            raise ConfigurationError(f"backend must be a llmrerank Backend, got {type(backend).__name__}")
        self.backend = backend if backend is not None else default_backend()
        self.strategy = make_strategy(strategy or self.backend.preferred_strategy)
        if uses_likelihood(self.strategy, self.backend.preferred_strategy) and not self.backend.supports_likelihood:
            raise ConfigurationError(
                f"strategy {self.strategy.name!r} scores log P(query | document), which {self.backend!r} cannot "
                "compute: use LocalBackend(), or OpenAIBackend(base_url=..., likelihood=True) against a server "
                "whose /v1/completions echoes prompt log-probs (vLLM)"
            )
        self._fusion_asked = fusion != "auto"
        self.fusion = self._pick_fusion(fusion)
        self.calibration = self._load_calibration(calibration, min_probability, min_score)
        self.min_probability = min_probability
        self.diversity = check_mmr(diversity)
        self.dedup = make_dedup(dedup)
        self.domain = domain
        self.on_error = on_error
        self.strict = strict
        self.deadline = deadline
        self.cache = cache
        self.min_score = self._check_min_score(min_score)
        self.max_concurrency = max_concurrency
        # One adaptive bound for every rerank, thread and event loop of this reranker.
        self._limits = AdaptiveLimiter(max_concurrency)

    def __repr__(self) -> str:
        return f"Reranker(strategy={self.strategy!r}, backend={self.backend!r})"

    def _context(self, top_k: int | None) -> Context:
        return Context(
            top_k=top_k,
            supports_logprobs=self.backend.supports_logprobs,
            strict=self.strict,
            domain=self.domain,
            pointwise_method=self.backend.pointwise_method,
            preferred_strategy=self.backend.preferred_strategy,
            context_tokens=self.backend.prompt_room(),
        )

    async def _chars_per_token(self, query: str, docs: Sequence[Document], ctx: Context) -> float | None:
        """Characters per token to fit this rerank's prompts by: its query and documents (as the
        strategy cuts them) counted by the server's tokenizer in one request, less
        :data:`~llmrerank.prompts.MEASURED_SHARE`; None (the cautious default) without a tokenizer."""
        cut = self.strategy.doc_chars(ctx) or MEASURE_CHARS
        sample = "\n".join([query, *(clip(d.text, cut).text for d in docs)])[:MEASURE_CHARS]
        tokens = await self.backend.count_tokens(sample)
        if not tokens:
            return None
        return MEASURED_SHARE * len(sample) / tokens

    def first_stage_scores(self, documents: Sequence[Any]) -> list[float | None] | None:
        """The first-stage scores this reranker's fusion reads from ``documents`` (None without
        fusion): what ``rerank(..., first_stage_scores=...)`` gives in their place."""
        return None if self.fusion is None else _scores_in(documents, self.fusion)

    def _pick_fusion(self, fusion: Fusion | str | None) -> Fusion | None:
        """``fusion`` made (:func:`~llmrerank.fusion.make_fusion`); ``"auto"``: the backend's
        ``preferred_fusion`` when the strategy is the backend's preferred one, else none."""
        if fusion != "auto":
            return make_fusion(fusion)
        preferred = self.strategy.name == self.backend.preferred_strategy
        return self.backend.preferred_fusion if preferred else None

    def _check_min_score(self, min_score: float | None) -> float | None:
        """``min_score`` if it is in range and this strategy gives 0-10 ratings; else ConfigurationError."""
        check_min_score(min_score)
        if min_score is None:
            return None
        if self.fusion is not None:
            raise ConfigurationError("min_score needs 0-10 ratings; fused scores are not: pass fusion=None")
        if not self.strategy.absolute_scores(self._context(None)):
            scale = {
                "listwise": "an order (or window-relative probabilities), not ratings",
                "pairwise": "win rates or an order, not ratings",
            }.get(self.strategy.name, "no 0-10 ratings")
            raise ConfigurationError(
                f"min_score needs 0-10 scores; {self.strategy.name} gives {scale}: "
                "use Pointwise (or Hybrid(llm='pointwise')), or filter on rank with top_k"
            )
        return min_score

    def _load_calibration(
        self, calibration: str | Path | Calibration | None, min_probability: float | None, min_score: float | None
    ) -> Calibration | None:
        if min_probability is not None and not (is_number(min_probability) and 0 <= min_probability <= 1):
            raise ConfigurationError(f"min_probability must be a number from 0 to 1, got {min_probability!r}")
        if calibration is None:
            if min_probability is not None:
                raise ConfigurationError("min_probability needs calibration=FILE (fit one with: llmrerank calibrate)")
            return None
        if not isinstance(calibration, str | Path | Calibration):
            raise ConfigurationError(f"calibration must be a file path or a Calibration, got {calibration!r}")
        if min_score is not None:
            raise ConfigurationError("with calibration, filter on min_probability, not min_score")
        if self._fusion_asked and self.fusion is not None:
            raise ConfigurationError("calibration maps the strategy's own score; fused scores are not it: fusion=None")
        self.fusion = None
        return load_calibration(calibration, self.backend.model, self.strategy.name)

    def _limiter(self) -> AdaptiveLimiter:
        # One bound for every thread and event loop this reranker is used from.
        return self._limits

    async def aclose(self) -> None:
        """Close the backend's clients and connections (:meth:`Backend.aclose`); the reranker stays usable."""
        await self.backend.aclose()

    def close(self) -> None:
        """Blocking :meth:`aclose`."""
        self.backend.close()

    async def arerank(
        self,
        query: str,
        documents: Sequence[D],
        top_k: int | None = None,
        *,
        min_score: float | None = None,
        first_stage_scores: Sequence[float | None] | None = None,
        top_n: int | None = None,
    ) -> RerankResult[D]:
        """Rerank ``documents`` for ``query``; return the best ``top_k`` (all when None).

        ``top_n`` is another name for ``top_k`` (LangChain's and LlamaIndex's); giving both raises
        :class:`~llmrerank.errors.InvalidInputError`.

        ``documents`` may be strings, dicts with ``content`` or ``text`` (plus ``id``/``metadata``),
        or objects with ``page_content`` or ``text``; results hold the caller's own objects.
        ``min_score`` overrides the reranker's for this call.

        Input rules: an empty list gives an empty result without any LLM call; a blank or
        non-string query, None (as the list or as an item), a dict without text, a bare number
        and a ``top_k`` that is not a positive int raise
        :class:`~llmrerank.errors.InvalidInputError` before any call. ``top_k`` larger than the
        list returns everything. Duplicate documents are kept, each with its own index. Texts
        longer than the strategy's ``max_doc_chars`` are cut (diagnostic ``truncated``); control
        and invisible characters and imitation ``<document>`` tags are neutralised in prompts
        (:func:`~llmrerank.prompts.sanitize`), while results hold the caller's objects unchanged.

        Whatever did not rerank says so: :attr:`~llmrerank.types.RerankResult.status`,
        ``degraded`` with ``degraded_reasons``, ``fallback`` per document, and one warning on the
        ``llmrerank`` logger naming the cause.
        ``first_stage_scores`` (one number or None per document) replace the scores the reranker's
        ``fusion`` would read from the documents; without fusion they raise
        :class:`~llmrerank.errors.ConfigurationError`.

        With ``opentelemetry-api`` installed, each rerank is a span with a child span per LLM call
        (:mod:`llmrerank.telemetry`).
        """
        if top_n is not None:
            if top_k is not None:
                raise InvalidInputError(f"top_k={top_k!r} and top_n={top_n!r}: pass one (they are the same setting)")
            top_k = top_n
        with rerank_span(self.strategy.name, self.backend, documents, top_k) as record:
            result = await self._arerank(
                query, documents, top_k, min_score=min_score, first_stage_scores=first_stage_scores
            )
            record(result)
            return result

    async def _arerank(
        self,
        query: str,
        documents: Sequence[D],
        top_k: int | None,
        *,
        min_score: float | None,
        first_stage_scores: Sequence[float | None] | None,
    ) -> RerankResult[D]:
        started = time.perf_counter()
        query = check_query(query)
        top_k = check_top_k(top_k)
        threshold = self.min_score if min_score is None else self._check_min_score(min_score)
        originals = document_list(documents)
        docs = normalize_documents(originals)
        explicit = self._check_first_stage(first_stage_scores, len(docs))
        prompt_query = clean_query(query)
        if not prompt_query:
            raise InvalidInputError("query is empty once control and invisible characters are removed")
        name = self.strategy.name
        if not docs:
            return RerankResult((), query, name, "input_order")
        ranking, meter = await self._run(prompt_query, docs, top_k)
        ranking = self._rescore(ranking, originals, explicit)
        outcome = assess(ranking, meter, len(docs), name, self.deadline)
        if outcome.warning is not None:
            logger.warning("llmrerank: %s", outcome.warning)
            quotes = unreadable_quotes(outcome.diagnostics)
            if quotes:
                logger.debug("llmrerank: %s rerank, unreadable answers (may quote documents): %s", name, quotes)
        ranked = ranked_documents(ranking, originals, outcome)
        ranked, dropped = drop_below(ranked, outcome.score_kind, threshold, self.min_probability)
        texts = [d.text for d in docs]
        ranked, duplicate, notes = await diversify(ranked, texts, outcome.score_kind, self.diversity, self.dedup)
        usage = meter.usage(time.perf_counter() - started)
        return build_result(
            query,
            name,
            outcome,
            ranked,
            top_k=top_k,
            usage=usage,
            model=meter.model,
            dropped=dropped + duplicate,
            notes=notes,
        )

    def _check_first_stage(
        self, first_stage_scores: Sequence[float | None] | None, n: int
    ) -> Sequence[float | None] | None:
        """``first_stage_scores`` checked against ``n`` documents; they need fusion."""
        if first_stage_scores is None:
            return None
        if self.fusion is None:
            raise ConfigurationError("first_stage_scores need fusion: Reranker(..., fusion=Fusion(...))")
        return check_scores(first_stage_scores, n)

    def _rescore(self, ranking: Ranking, originals: Sequence[Any], explicit: Sequence[float | None] | None) -> Ranking:
        """The LLM's scores fused with the first-stage ones, or calibrated, as this reranker is set."""
        if self.fusion is not None:
            ranking = self._fuse(self.fusion, ranking, originals, explicit)
        if self.calibration is not None:
            ranking = calibrate_ranking(ranking, self.calibration)
            if ranking.score_kind != "probability":
                # Asked for and not applied: min_probability then filters nothing. Nothing judged: the
                # rerank's own degraded warning says why; one warning, not two.
                judged = len(ranking.unjudged) < len(ranking.order)
                logger.log(
                    logging.WARNING if judged else logging.INFO,
                    "llmrerank: calibration skipped (%s)",
                    ranking.diagnostics[-1].message,
                )
        return ranking

    async def _run(self, prompt_query: str, docs: Sequence[Document], top_k: int | None) -> tuple[Ranking, Meter]:
        """The strategy's plan, driven against the backend with prompts fitted to its context."""
        await self.backend.discover()  # once per backend: its context size, where the server reports it
        ctx = self._context(top_k)
        if ctx.context_tokens is not None:
            ctx = replace(ctx, chars_per_token=await self._chars_per_token(prompt_query, docs, ctx))
        driver = Driver(self.backend, self._limiter(), on_error=self.on_error, deadline=self.deadline, cache=self.cache)
        ranking = await driver.run(self.strategy.plan(prompt_query, docs, ctx))
        return complete(ranking, len(docs)), driver.meter

    def _fuse(
        self, fusion: Fusion, ranking: Ranking, originals: Sequence[Any], explicit: Sequence[float | None] | None
    ) -> Ranking:
        scores = list(explicit) if explicit is not None else _scores_in(originals, fusion)
        fused = fuse(ranking, scores, fusion)
        missing = sum(d.code == "first_stage_missing" for d in fused.diagnostics)
        if fused.score_kind != "fused":
            # Nothing judged: the rerank's own degraded warning says why; one warning, not two.
            judged = len(ranking.unjudged) < len(ranking.order)
            level = logging.WARNING if self._fusion_asked and judged else logging.INFO
            logger.log(level, "llmrerank: fusion skipped (%s)", fused.diagnostics[-1].message)
        elif missing:
            logger.warning(
                "llmrerank: %d of %d documents have no first-stage score; counted as the lowest", missing, len(scores)
            )
        return fused

    rerank = blocking(
        arerank,
        "rerank",
        """Blocking :meth:`arerank`; also safe inside a running event loop.

        It runs on llmrerank's one background event loop (:mod:`llmrerank.runner`), so the
        backend's HTTP client and connections are reused from one call to the next.
        """,
    )


def _scores_in(documents: Sequence[Any], fusion: Fusion) -> list[float | None]:
    """Each document's first-stage score under ``fusion``'s keys (None where it has none)."""
    return [first_stage_score(doc, fusion.keys) for doc in documents]
