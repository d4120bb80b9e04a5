"""``LLMRerankCompressor``: llmrerank as a LangChain document compressor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from langchain_core.callbacks import Callbacks, adispatch_custom_event, dispatch_custom_event
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config, get_callback_manager_for_config
from pydantic import ConfigDict, InstanceOf, PrivateAttr

from llmrerank import Backend, RankedDocument, RerankResult, Strategy
from llmrerank.adapter_options import setting
from llmrerank.backends.framework import blocking
from llmrerank.driver import OnError
from llmrerank.errors import InvalidInputError
from llmrerank.inputs import document_list
from llmrerank.options import LazyReranker, RerankerSlot

from .chat_backend import CALL_CONFIG, ChatModelBackend


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
    framework_backend: ClassVar[Callable[..., Backend]] = ChatModelBackend

    # Defaults, bounds and docs (the fields' descriptions): llmrerank.adapter_options, shared with LlamaIndex.
    strategy: str | InstanceOf[Strategy] | None = setting("strategy")
    backend: InstanceOf[Backend] | InstanceOf[BaseChatModel] | None = None
    """The LLM: an llmrerank backend (``OpenAIBackend(...)``, ``AnthropicBackend(...)``, ``LocalBackend()``)
    or any LangChain chat model (``ChatOpenAI``, ``ChatAnthropic``, ...). None picks one from the
    environment (:func:`llmrerank.default_backend`)."""
    model: str | None = setting("model")
    top_n: int | None = setting("top_n")
    domain: str | None = setting("domain")
    system_prompt: str | None = setting("system_prompt")
    template: str | None = setting("template")
    max_concurrency: int = setting("max_concurrency")
    on_error: OnError = setting("on_error")
    deadline: float | None = setting("deadline")
    cache: Any = setting("cache")
    min_score: float | None = setting("min_score")
    fusion: Any = setting("fusion")
    calibration: Any = setting("calibration")
    min_probability: float | None = setting("min_probability")
    diversity: Any = setting("diversity")
    dedup: Any = setting("dedup")

    _slot: RerankerSlot = PrivateAttr(default_factory=lambda: RerankerSlot())

    def rerank(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> RerankResult[Document]:
        """Rerank ``documents`` for ``query``: the whole result, whose documents are the annotated copies
        that :meth:`compress_documents` returns (best ``top_n``, above ``min_score``)."""
        documents = _langchain_documents(documents)
        reranker = self.reranker

        def run() -> RerankResult[Document]:
            CALL_CONFIG.set(RunnableConfig(callbacks=callbacks))
            return reranker.rerank(query, documents, self.top_n)

        result = _annotated(blocking(run))
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
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; return copies of the best ``top_n`` with their scores
        (no documents: ``[]``, without building the reranker)."""
        return self.rerank(documents, query, callbacks).documents if documents else []

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`, on the running event loop."""
        return (await self.arerank(documents, query, callbacks)).documents if documents else []


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
