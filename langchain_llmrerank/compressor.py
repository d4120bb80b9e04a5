"""``LLMRerankCompressor``: llmrerank as a LangChain document compressor."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, InstanceOf, PrivateAttr, model_validator

from llmrerank import Backend, RerankResult, Strategy
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
    copies, best first, with ``metadata["relevance_score"]`` (higher is better; ``None`` when the
    document could not be scored) and ``metadata["relevance_reason"]`` when the strategy gave a reason.
    The input documents are left as they are. An empty list gives ``[]`` without calling the LLM.

    Callbacks: when ``backend`` is a LangChain chat model, the ``callbacks`` of the compression call
    are passed to it, so each LLM call shows as a child run of the retriever's run (tagged
    ``llmrerank``). llmrerank's own backends (OpenAI, Anthropic, local) do not report to LangChain
    callbacks; their token use and timings are in the core's :class:`~llmrerank.RerankResult`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    strategy: str | InstanceOf[Strategy] | None = None
    """``"pointwise"``, ``"pairwise"``, ``"listwise"``, ``"hybrid"`` or a strategy object (for its options).

    None uses the backend's preferred strategy: listwise for API and chat models, pointwise with
    log-probabilities for the local model."""

    backend: InstanceOf[Backend] | InstanceOf[BaseChatModel] | None = None
    """The LLM: an llmrerank backend (``OpenAIBackend(...)``, ``AnthropicBackend(...)``, ``LocalBackend()``)
    or any LangChain chat model (``ChatOpenAI``, ``ChatAnthropic``, ...). None picks one from the
    environment (:func:`llmrerank.default_backend`)."""

    model: str | None = None
    """Shortcut for the environment's API backend with another model: ``"gpt-4.1-mini"`` with
    ``OPENAI_API_KEY`` set, a Claude model name with ``ANTHROPIC_API_KEY``. Not with ``backend``."""

    top_n: int | None = Field(default=3, ge=1)
    """How many documents to return, best first (3, like LangChain's other rerank compressors).
    None returns every document in the new order."""

    domain: str | None = None
    """``"legal"``, ``"medical"``, ``"ecommerce"``, or a sentence of your own added to the system prompt."""

    system_prompt: str | None = None
    """Replaces the built-in system prompt of a pointwise, pairwise or listwise strategy given by name
    (the ``domain`` instruction is still appended). For a strategy object, set it on the object."""

    template: str | None = None
    """Replaces the user prompt of the strategy named in ``strategy`` (required with it): placeholders
    ``{query}`` and ``{document}`` (pointwise), ``{query}``, ``{document_a}``, ``{document_b}``
    (pairwise) or ``{query}``, ``{count}``, ``{documents}`` (listwise)."""

    max_concurrency: int = Field(default=8, ge=1)
    """The most LLM calls in flight at once, across concurrent calls of this compressor."""

    on_error: Literal["degrade", "raise"] = "degrade"
    """``"degrade"`` returns a fallback order (logged as a warning) when LLM calls fail;
    ``"raise"`` raises llmrerank's typed error (``BackendError``, ``RateLimitError``, ...)."""

    deadline: float | None = Field(default=None, gt=0)
    """Seconds one compression may take; calls still running then are abandoned (see ``on_error``)."""

    cache: Any = None
    """A response cache (``llmrerank.MemoryCache()``, ``llmrerank.DiskCache(path)``, or anything with
    ``get``/``set``): a repeated prompt to the same model makes no LLM call."""

    _slot: RerankerSlot = PrivateAttr(default_factory=lambda: RerankerSlot())

    @model_validator(mode="after")
    def _check(self) -> LLMRerankCompressor:
        check_options(backend=self.backend, **self._options())
        return self

    def _backend(self) -> Backend | None:
        if isinstance(self.backend, BaseChatModel):
            return ChatModelBackend(self.backend, max_workers=self.max_concurrency)
        return self.backend

    def _documents(self, documents: Sequence[Document], result: RerankResult) -> list[Document]:
        out = []
        for item in result:
            original = documents[item.index]
            metadata = {**original.metadata, "relevance_score": item.score}
            if item.reason is not None:
                metadata["relevance_reason"] = item.reason
            out.append(original.model_copy(update={"metadata": metadata}))
        return out

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; return copies of the best ``top_n`` with their scores."""
        if not documents:
            return []
        reranker = self.reranker
        texts = [doc.page_content for doc in documents]

        def run() -> RerankResult:
            CALL_CONFIG.set(RunnableConfig(callbacks=callbacks))
            SYNC_CALLS.set(True)
            return reranker.rerank(query, texts, self.top_n)

        return self._documents(documents, contextvars.copy_context().run(run))

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`, on the running event loop."""
        if not documents:
            return []
        reranker = self.reranker
        texts = [doc.page_content for doc in documents]
        token = CALL_CONFIG.set(RunnableConfig(callbacks=callbacks))
        try:
            result = await reranker.arerank(query, texts, self.top_n)
        finally:
            CALL_CONFIG.reset(token)
        return self._documents(documents, result)
