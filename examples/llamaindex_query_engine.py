"""Rerank a LlamaIndex query engine's retrieved nodes with an LLM (``LLMRerankPostprocessor``).

Run it from the repository root::

    python examples/llamaindex_query_engine.py

It needs ``pip install "llmrerank[llamaindex]"``. The reranking LLM comes from the environment: with
``OPENAI_API_KEY`` set (and optionally ``OPENAI_BASE_URL`` for any OpenAI-compatible server) it uses
OpenAI ``gpt-4o-mini``; else with ``ANTHROPIC_API_KEY`` set, Claude Haiku; with neither, the small
local demo model SmolLM2-135M-Instruct (the two lines of the README's Install section;
``llmrerank doctor`` says what is missing), fully offline: fine for trying it, weak for real ranking.

The answer-writing LLM of the engine is LlamaIndex's ``MockLLM`` here, so that the example runs with
no key and prints the reranked source nodes only; pass your own ``llm=`` to get a real answer.
"""

from __future__ import annotations

from typing import Any

from llama_index.core import SummaryIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import MockLLM
from llama_index.core.schema import TextNode

from llamaindex_llmrerank import LLMRerankEndEvent, LLMRerankPostprocessor

QUERY = "How do solar panels turn sunlight into electricity?"

TEXTS = [
    "Wind turbines convert the kinetic energy of moving air into electricity.",
    "Solar panels are made of photovoltaic cells that turn sunlight into electricity.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "In a photovoltaic cell, photons from sunlight knock electrons loose, producing a current.",
    "Solar water heaters use the sun's heat, not electricity, to warm water.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
]


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
    for node in response.source_nodes:
        meta = node.node.metadata
        score = meta["relevance_score"]
        shown = f"score {score:.3f}" if score is not None else f"no score ({meta['rerank_score_kind']})"
        fallback = "  FALLBACK: not placed by the model" if meta["rerank_fallback"] else ""
        print(f"  {meta['rerank_rank']}. {shown}  [{node.node.node_id}] {node.node.get_content()}{fallback}")
    (result,) = report.results
    usage = result["usage"]
    reasons = f" ({', '.join(result['degraded_reasons'])})" if result["degraded"] else ""
    print(f"\nStatus: {result['status']}{reasons}; {usage['calls']} LLM calls, {usage['total_tokens']} tokens")


if __name__ == "__main__":
    main()
