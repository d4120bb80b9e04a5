"""Rerank a LangChain retriever's results with an LLM (``LLMRerankCompressor``).

Run it from the repository root::

    python examples/langchain_retriever.py

It needs ``pip install "llmrerank[langchain]"``. The LLM comes from the environment: with
``OPENAI_API_KEY`` set (and optionally ``OPENAI_BASE_URL`` for any OpenAI-compatible server) it
uses OpenAI ``gpt-4o-mini``; else with ``ANTHROPIC_API_KEY`` set, Claude Haiku; with neither, the
small local demo model SmolLM2-135M-Instruct (the two lines of the README's Install section;
``llmrerank doctor`` says what is missing), fully offline: fine for trying it, weak for real ranking.
"""

from __future__ import annotations

from typing import Any

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_llmrerank import LLMRerankCompressor

QUERY = "How do solar panels turn sunlight into electricity?"

DOCUMENTS = [
    "Wind turbines convert the kinetic energy of moving air into electricity.",
    "Solar panels are made of photovoltaic cells that turn sunlight into electricity.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "In a photovoltaic cell, photons from sunlight knock electrons loose, producing a current.",
    "Solar water heaters use the sun's heat, not electricity, to warm water.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
]


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
    documents = [Document(page_content=text, metadata={"id": i}) for i, text in enumerate(DOCUMENTS)]
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
    for doc in reranked:
        meta = doc.metadata
        score = meta["relevance_score"]
        shown = f"score {score:.3f}" if score is not None else f"no score ({meta['rerank_score_kind']})"
        fallback = "  FALLBACK: not placed by the model" if meta["rerank_fallback"] else ""
        print(f"  {meta['rerank_rank']}. {shown}  [doc {meta['id']}] {doc.page_content}{fallback}")
    (result,) = report.results
    usage = result["usage"]
    reasons = f" ({', '.join(result['degraded_reasons'])})" if result["degraded"] else ""
    print(f"\nStatus: {result['status']}{reasons}; {usage['calls']} LLM calls, {usage['total_tokens']} tokens")


if __name__ == "__main__":
    main()
