"""Rerank a LlamaIndex query engine's retrieved nodes with an LLM (``LLMRerankPostprocessor``).

Run it from the repository root::

    python examples/llamaindex_query_engine.py

It needs ``pip install "llmrerank[llamaindex]"``. The reranking LLM comes from the environment: with
``OPENAI_API_KEY`` set (and optionally ``OPENAI_BASE_URL`` for any OpenAI-compatible server) it uses
OpenAI ``gpt-4o-mini``; else with ``ANTHROPIC_API_KEY`` set, Claude Haiku; with neither, the small
local demo model SmolLM2-135M-Instruct (the two lines of the README's Install section;
``llmrerank doctor`` says what is missing), fully offline: fine for trying it, weak for real ranking.

The query, the documents and the printing are in ``example_report.py`` beside it, shared with the
LangChain example. The answer-writing LLM of the engine is LlamaIndex's ``MockLLM`` here, so that the example runs with
no key and prints the reranked source nodes only; pass your own ``llm=`` to get a real answer.
"""

from __future__ import annotations

from typing import Any

from example_report import QUERY, TEXTS, print_reranked, print_status
from llama_index.core import SummaryIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import MockLLM
from llama_index.core.schema import TextNode

from llamaindex_llmrerank import LLMRerankEndEvent, LLMRerankPostprocessor


class RerankReport(BaseEventHandler):
    """Receives what each rerank did (usage, status, diagnostics) from the rerank end event."""

    results: list[dict[str, Any]] = Field(default_factory=list)

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMRerankEndEvent):
            self.results.append(event.result)


def main() -> None:
    report = RerankReport()
    get_dispatcher().add_event_handler(report)
    # A SummaryIndex retrieves every node, in insertion order: a first stage that needs no embeddings.
    index = SummaryIndex([TextNode(text=text, id_=f"doc{i}") for i, text in enumerate(TEXTS)])
    reranker = LLMRerankPostprocessor(top_n=3)  # no LLM named: taken from the environment
    engine = index.as_query_engine(node_postprocessors=[reranker], llm=MockLLM())  # MockLLM: see the docstring

    response = engine.query(QUERY)
    core = reranker.reranker
    print(f"Query: {QUERY}\n")
    top = f"top {reranker.top_n} of {len(TEXTS)}"
    print(f"Reranked by {core.backend!r} with the {core.strategy.name} strategy ({top}):")
    for node in response.source_nodes:  # nodes whose metadata says what the rerank did
        print_reranked(node.node.metadata, node.node.node_id, node.node.get_content())
    (summary,) = report.results
    print_status(summary)


if __name__ == "__main__":
    main()
