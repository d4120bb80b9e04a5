"""``LLMRerankCompressor``: llmrerank as a LangChain document compressor."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

from langchain_core.callbacks import Callbacks, adispatch_custom_event, dispatch_custom_event
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config, get_callback_manager_for_config
from pydantic import AliasChoices, ConfigDict, Field, InstanceOf, PrivateAttr, model_validator

from llmrerank import Backend, RankedDocument, RerankResult, Strategy
from llmrerank.adaptive import DEFAULT_MAX_CONCURRENCY
from llmrerank.errors import InvalidInputError
from llmrerank.inputs import document_list
from llmrerank.options import LazyReranker, RerankerSlot, check_options

from .chat_backend import CALL_CONFIG, SYNC_CALLS, ChatModelBackend

T = TypeVar("T")


class LLMRerankCompressor(LazyReranker, BaseDocumentCompressor):
    """Rerank retrieved documents with an LLM, for ``ContextualCompressionRetriever`` and pipelines.

    >>> from langchain_classic.retrievers import ContextualCompressionRetriever   # doctest: +SKIP
    >>> retriever = ContextualCompressionRetriever(
    ...     base_compressor=LLMRerankCompressor(), base_retriever=vectorstore.as_retriever(search_kwargs={"k": 20})
    ... )                                                                           # doctest: +SKIP

    With no arguments the LLM comes from the environment (``OPENAI_API_KEY``, then ``ANTHROPIC_API_KEY``,
    else the small local demo model); see :func:`llmrerank.default_backend`. The documents returned are
    copies, best first, whose metadata says what the rerank did (:meth:`llmrerank.RerankResult.metadata`):
    ``relevance_score`` (the model's score; ``None`` for rank-only strategies such as listwise and for
    documents no answer placed), ``rerank_rank``, ``rerank_score_kind``, ``rerank_fallback`` (this
    document kept a fallback place), ``rerank_degraded`` (the rerank degraded) and ``relevance_reason``
    when the strategy gave one. The input documents are left as they are. An empty list gives ``[]``
    without calling the LLM.

    The whole :class:`~llmrerank.RerankResult` (usage, diagnostics, status) is returned by
    :meth:`rerank` / :meth:`arerank`, and sent to LangChain callbacks as the custom event
    ``llmrerank_result`` (data: :meth:`~llmrerank.RerankResult.summary`) whenever the compression runs
    inside a traced run, as it does under ``ContextualCompressionRetriever``.

    Callbacks: when ``backend`` is a LangChain chat model, the ``callbacks`` of the compression call
    are passed to it, so each LLM call shows as a child run of the retriever's run (tagged
    ``llmrerank``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    strategy: str | InstanceOf[Strategy] | None = None
    """``"pointwise"``, ``"pairwise"``, ``"listwise"``, ``"hybrid"``, ``"query_likelihood"`` or a strategy
    object (for its options).

    None uses the backend's preferred strategy: listwise for API and chat models, query likelihood
    for the local model."""

    backend: InstanceOf[Backend] | InstanceOf[BaseChatModel] | None = None
    """The LLM: an llmrerank backend (``OpenAIBackend(...)``, ``AnthropicBackend(...)``, ``LocalBackend()``)
    or any LangChain chat model (``ChatOpenAI``, ``ChatAnthropic``, ...). None picks one from the
    environment (:func:`llmrerank.default_backend`)."""

    model: str | None = None
    """Shortcut for the environment's API backend with another model: ``"gpt-4.1-mini"`` with
    ``OPENAI_API_KEY`` set, a Claude model name with ``ANTHROPIC_API_KEY``. Not with ``backend``."""

    top_n: int | None = Field(default=3, ge=1, validation_alias=AliasChoices("top_n", "top_k"))
    """How many documents to return, best first (3, like LangChain's other rerank compressors).
    None returns every document in the new order. Also accepted as ``top_k=``, the name llmrerank's
    own ``rerank()`` uses."""

    domain: str | None = None
    """``"legal"``, ``"medical"``, ``"ecommerce"``, or a sentence of your own added to the system prompt."""

    system_prompt: str | None = None
    """Replaces the built-in system prompt of a pointwise, pairwise or listwise strategy given by name
    (the ``domain`` instruction is still appended). For a strategy object, set it on the object."""

    template: str | None = None
    """Replaces the user prompt of the strategy named in ``strategy`` (required with it): placeholders
    ``{query}`` and ``{document}`` (pointwise), ``{query}``, ``{document_a}``, ``{document_b}``
    (pairwise) or ``{query}``, ``{count}``, ``{documents}`` (listwise)."""

    max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1)
    """The most LLM calls in flight at once, across concurrent calls of this compressor."""

    on_error: Literal["degrade", "degrade_all", "raise"] = "degrade"
    """``"degrade"`` returns a fallback order (``rerank_degraded`` in the metadata, and a warning in the
    log) when LLM calls fail for a passing reason (429, 5xx, timeouts) and raises for a permanent one
    (bad key, unknown model: :class:`~llmrerank.errors.PermanentBackendError`); ``"degrade_all"``
    degrades on both; ``"raise"`` raises llmrerank's typed error for any failure."""

    deadline: float | None = Field(default=None, gt=0)
    """Seconds one compression may take; calls still running then are abandoned (see ``on_error``)."""

    cache: Any = None
    """A response cache (``llmrerank.MemoryCache()``, ``llmrerank.DiskCache(path)``, or anything with
    ``get``/``set``): a repeated prompt to the same model makes no LLM call."""

    min_score: float | None = Field(default=None, ge=0, le=10)
    """Drop documents the model rated below this (0-10), as ``LLMChainFilter`` drops what the LLM
    rejects. Needs a strategy with 0-10 scores (``"pointwise"``); unscored documents are kept."""
    fusion: Any = "auto"
    """Combine the LLM's score with each document's ``metadata["score"]`` or ``["relevance_score"]``
    (a retriever's score): an ``llmrerank.Fusion``, a method name (``"zscore"``, ``"minmax"``,
    ``"rrf"``), None for never, or ``"auto"``: the backend's default (the local model's)."""
    calibration: Any = None
    """A calibration file (``llmrerank calibrate``) for this model and strategy: ``relevance_score``
    becomes P(relevant) in [0, 1] (``rerank_score_kind`` ``"probability"``)."""
    min_probability: float | None = Field(default=None, ge=0, le=1)
    """With ``calibration``: drop documents less likely relevant than this."""
    diversity: Any = None
    """An ``llmrerank.MMR(lambda_=0.7, embedder=...)``: reorder the result by maximal marginal relevance."""
    dedup: Any = None
    """A cosine threshold (``0.95``) or an ``llmrerank.Dedup``: drop near-duplicates of better-ranked documents."""

    _slot: RerankerSlot = PrivateAttr(default_factory=lambda: RerankerSlot())

    @model_validator(mode="after")
    def _check(self) -> LLMRerankCompressor:
        check_options(backend=self.backend, **self._options())
        return self

    def _backend(self) -> Backend | None:
        if isinstance(self.backend, BaseChatModel):
            return ChatModelBackend(self.backend, max_workers=self.max_concurrency)
        return self.backend

    def rerank(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> RerankResult[Document]:
        """Rerank ``documents`` for ``query``: the whole result, whose documents are the annotated copies
        that :meth:`compress_documents` returns (best ``top_n``, above ``min_score``)."""
        documents = _langchain_documents(documents)
        reranker = self.reranker

        def run() -> RerankResult[Document]:
            CALL_CONFIG.set(RunnableConfig(callbacks=callbacks))
            SYNC_CALLS.set(True)
            return reranker.rerank(query, documents, self.top_n)

        result = _annotated(contextvars.copy_context().run(run))
        config = _traced(callbacks)
        if config is not None:
            dispatch_custom_event(RESULT_EVENT, result.summary(), config=config)
        return result

    async def arerank(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> RerankResult[Document]:
        """Async :meth:`rerank`, on the running event loop."""
        documents = _langchain_documents(documents)
        reranker = self.reranker
        token = CALL_CONFIG.set(RunnableConfig(callbacks=callbacks))
        try:
            result = _annotated(await reranker.arerank(query, documents, self.top_n))
        finally:
            CALL_CONFIG.reset(token)
        config = _traced(callbacks)
        if config is not None:
            await adispatch_custom_event(RESULT_EVENT, result.summary(), config=config)
        return result

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; return copies of the best ``top_n`` with their scores."""
        if not documents:
            return []
        return self.rerank(documents, query, callbacks).documents

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`, on the running event loop."""
        if not documents:
            return []
        return (await self.arerank(documents, query, callbacks)).documents


def _langchain_documents(documents: Sequence[Any]) -> list[Document]:
    """The documents as a list, each a LangChain ``Document``: anything else raises
    :class:`~llmrerank.errors.InvalidInputError` before any LLM call (the results are copies of
    each document with rerank metadata, which only a ``Document`` has)."""
    items = list(document_list(documents))
    for i, doc in enumerate(items):
        if not isinstance(doc, Document):
            raise InvalidInputError(
                f"documents[{i}] is a {type(doc).__name__}, not a LangChain Document: pass "
                "Document(page_content=..., metadata=...), or use llmrerank.Reranker for plain texts and dicts"
            )
    return items


RESULT_EVENT = "llmrerank_result"
"""Name of the LangChain custom event carrying :meth:`llmrerank.RerankResult.summary`."""


def _annotated(result: RerankResult[Document]) -> RerankResult[Document]:
    """The result with copies of the documents that carry :meth:`~llmrerank.RerankResult.metadata`."""

    def copy(item: RankedDocument[Document]) -> RankedDocument[Document]:
        metadata = {**item.document.metadata, **result.metadata(item)}
        return replace(item, document=item.document.model_copy(update={"metadata": metadata}))

    return replace(result, items=tuple(map(copy, result.items)), dropped=tuple(map(copy, result.dropped)))


def _traced(callbacks: Callbacks | None) -> RunnableConfig | None:
    """The config to dispatch a custom event under, when there is a run to attach it to."""
    config = ensure_config(RunnableConfig(callbacks=callbacks) if callbacks is not None else None)
    if get_callback_manager_for_config(config).parent_run_id is None:
        return None
    return config
