"""Rerank a LangChain retriever's results with an LLM (``LLMRerankCompressor``).

Run it from the repository root::

    python examples/langchain_retriever.py

It needs ``pip install "llmrerank[langchain]"``. The LLM comes from the environment: with
``OPENAI_API_KEY`` set (and optionally ``OPENAI_BASE_URL`` for any OpenAI-compatible server) it
uses OpenAI ``gpt-4o-mini``; else with ``ANTHROPIC_API_KEY`` set, Claude Haiku; with neither, the
small local demo model SmolLM2-135M-Instruct (the two lines of the README's Install section;
``llmrerank doctor`` says what is missing), fully offline: fine for trying it, weak for real ranking.

The query, the documents and the printing are in ``example_report.py`` beside it, shared with the
LlamaIndex example.
"""

from __future__ import annotations

from typing import Any

from example_report import QUERY, TEXTS, print_reranked, print_status
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_llmrerank import LLMRerankCompressor


class RerankReport(BaseCallbackHandler):
    """Receives what each rerank did (usage, status, diagnostics) as LangChain's custom event."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == "llmrerank_result":
            self.results.append(data)


class StoredOrderRetriever(BaseRetriever):
    """A stand-in for your vector store's retriever: the first ``k`` documents in stored order.

    (LangChain's in-memory vector store needs numpy, which the ``langchain`` extra does not bring.)
    """

    documents: list[Document]
    k: int = 20

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.documents[: self.k]


def main() -> None:
    # The first stage's order ignores the query: the reranker's job is to fix it.
    documents = [Document(page_content=text, metadata={"id": i}) for i, text in enumerate(TEXTS)]
    base_retriever = StoredOrderRetriever(documents=documents)

    compressor = LLMRerankCompressor(top_n=3)  # no LLM named: taken from the environment
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)

    print(f"Query: {QUERY}\n")
    print("First stage (stored order):")
    for rank, doc in enumerate(base_retriever.invoke(QUERY), 1):
        print(f"  {rank}. [doc {doc.metadata['id']}] {doc.page_content}")

    report = RerankReport()
    reranked = retriever.invoke(QUERY, {"callbacks": [report]})
    reranker = compressor.reranker
    print(f"\nReranked by {reranker.backend!r} with the {reranker.strategy.name} strategy (top {compressor.top_n}):")
    for doc in reranked:  # copies whose metadata says what the rerank did
        print_reranked(doc.metadata, f"doc {doc.metadata['id']}", doc.page_content)
    (summary,) = report.results
    print_status(summary)


if __name__ == "__main__":
    main()
