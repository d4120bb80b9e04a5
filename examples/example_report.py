"""What both adapter examples rerank and print: the query, the documents, and each reranked
document with its rerank metadata (the same keys in a LangChain ``Document``'s and a LlamaIndex
node's ``metadata``: ``relevance_score``, ``rerank_rank``, ``rerank_score_kind``, ``rerank_fallback``)
and the status line from :meth:`llmrerank.RerankResult.summary`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

QUERY = "How do solar panels turn sunlight into electricity?"

TEXTS = [
    "Wind turbines convert the kinetic energy of moving air into electricity.",
    "Solar panels are made of photovoltaic cells that turn sunlight into electricity.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "In a photovoltaic cell, photons from sunlight knock electrons loose, producing a current.",
    "Solar water heaters use the sun's heat, not electricity, to warm water.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
]


def print_reranked(metadata: Mapping[str, Any], label: str, text: str) -> None:
    """One reranked document: its place, the model's score (or why there is none), and whether the
    model placed it at all."""
    score = metadata["relevance_score"]
    shown = f"score {score:.3f}" if score is not None else f"no score ({metadata['rerank_score_kind']})"
    fallback = "  FALLBACK: not placed by the model" if metadata["rerank_fallback"] else ""
    print(f"  {metadata['rerank_rank']}. {shown}  [{label}] {text}{fallback}")


def print_status(summary: Mapping[str, Any]) -> None:
    """What the rerank did, from the summary the adapter reported: status, why it degraded, usage."""
    usage = summary["usage"]
    reasons = f" ({', '.join(summary['degraded_reasons'])})" if summary["degraded"] else ""
    print(f"\nStatus: {summary['status']}{reasons}; {usage['calls']} LLM calls, {usage['total_tokens']} tokens")
