"""The settings both framework adapters declare, written once: each one's default, bounds and doc.

The LangChain compressor and the LlamaIndex postprocessor are pydantic models with the same
settings (:data:`~llmrerank.options.FIELDS` and ``top_n``). Each adapter writes a field's type
and gets the rest from :func:`setting`, so the two cannot drift apart; only ``backend`` (the
framework's own model type) and each framework's extras are declared in the adapter alone.

The core needs no pydantic: :func:`setting` imports it when an adapter calls it (LangChain and
LlamaIndex are both built on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .adaptive import DEFAULT_MAX_CONCURRENCY


@dataclass(frozen=True)
class Option:
    """One shared setting: its default, pydantic bounds (``ge``, ``gt``, ``le``), accepted names and doc."""

    default: Any
    doc: str
    bounds: tuple[tuple[str, float], ...] = ()
    aliases: tuple[str, ...] = ()
    """Names accepted besides the field's own (the field's name first)."""


OPTIONS: dict[str, Option] = {
    "strategy": Option(
        None,
        """``"pointwise"``, ``"batch_score"``, ``"pairwise"``, ``"setwise"``, ``"listwise"``, ``"topdown"``,
``"hybrid"``, ``"query_likelihood"`` or a strategy object (for its options). None uses the backend's
preferred strategy: listwise for API models and the framework's own models (LangChain chat models,
LlamaIndex LLMs), query likelihood for the local model.""",
    ),
    "model": Option(
        None,
        """Shortcut for the environment's API backend with another model: ``"gpt-4.1-mini"`` with
``OPENAI_API_KEY`` set, a Claude model name with ``ANTHROPIC_API_KEY``. Not with ``backend``.""",
    ),
    "top_n": Option(
        3,
        """How many documents (LlamaIndex: nodes) to return, best first; 3 by default. None returns every
document in the new order. Also accepted as ``top_k=``, the name llmrerank's own ``rerank()`` uses.""",
        bounds=(("ge", 1),),
        aliases=("top_n", "top_k"),
    ),
    "domain": Option(
        None,
        """``"legal"``, ``"medical"``, ``"ecommerce"``, or a sentence of your own added to the system prompt.""",
    ),
    "system_prompt": Option(
        None,
        """Replaces the built-in system prompt of a pointwise, pairwise or listwise strategy given by name
(the ``domain`` instruction is still appended). For a strategy object, set it on the object.""",
    ),
    "template": Option(
        None,
        """Replaces the user prompt of the strategy named in ``strategy`` (required with it): placeholders
``{query}`` and ``{document}`` (pointwise), ``{query}``, ``{document_a}``, ``{document_b}``
(pairwise) or ``{query}``, ``{count}``, ``{documents}`` (listwise).""",
    ),
    "max_concurrency": Option(
        DEFAULT_MAX_CONCURRENCY,
        """The most LLM calls in flight at once, across concurrent calls of this compressor or postprocessor.""",
        bounds=(("ge", 1),),
    ),
    "on_error": Option(
        "degrade",
        """``"degrade"`` returns a fallback order (``rerank_degraded`` in the metadata, and a warning in the
log) when LLM calls fail for a passing reason (429, 5xx, timeouts) and raises for a permanent one
(bad key, unknown model: :class:`~llmrerank.errors.PermanentBackendError`); ``"degrade_all"``
degrades on both; ``"raise"`` raises llmrerank's typed error for any failure.""",
    ),
    "deadline": Option(
        None,
        """Seconds one rerank may take; calls still running then are abandoned (see ``on_error``).""",
        bounds=(("gt", 0),),
    ),
    "cache": Option(
        None,
        """A response cache (``llmrerank.MemoryCache()``, ``llmrerank.DiskCache(path)``, or anything with
``get``/``set``): a repeated prompt to the same model makes no LLM call.""",
    ),
    "min_score": Option(
        None,
        """Drop documents the model rated below this (0-10), as LangChain's ``LLMChainFilter`` drops what
the LLM rejects. Needs a strategy with 0-10 scores (``"pointwise"``); unscored documents are kept.""",
        bounds=(("ge", 0), ("le", 10)),
    ),
    "fusion": Option(
        "auto",
        """Combine the LLM's score with each document's retrieval score (LangChain: ``metadata["score"]``
or ``["relevance_score"]``; LlamaIndex: ``NodeWithScore.score``): an ``llmrerank.Fusion``, a method
name (``"zscore"``, ``"minmax"``, ``"rrf"``), None for never, or ``"auto"``: the backend's default
(the local model's).""",
    ),
    "calibration": Option(
        None,
        """A calibration file (``llmrerank calibrate``) for this model and strategy: the score
(``relevance_score``; LlamaIndex: also the node's score) becomes P(relevant) in [0, 1]
(``rerank_score_kind`` ``"probability"``).""",
    ),
    "min_probability": Option(
        None,
        """With ``calibration``: drop documents less likely relevant than this.""",
        bounds=(("ge", 0), ("le", 1)),
    ),
    "diversity": Option(
        None,
        """An ``llmrerank.MMR(lambda_=0.7, embedder=...)``: reorder the result by maximal marginal relevance.""",
    ),
    "dedup": Option(
        None,
        """A cosine threshold (``0.95``) or an ``llmrerank.Dedup``: drop near-duplicates of better-ranked
documents.""",
    ),
}
"""The shared settings by field name, in the order the adapters declare them."""


def setting(name: str, **extra: Any) -> Any:
    """The pydantic field for the shared setting ``name`` (:data:`OPTIONS`): its default, bounds,
    accepted names and doc (the field's ``description``); ``extra`` adds an adapter's own field
    options (LlamaIndex's ``exclude=True`` for objects its ``to_dict`` cannot write)."""
    from pydantic import AliasChoices, Field

    option = OPTIONS[name]
    options: dict[str, Any] = {**dict(option.bounds), **extra}
    if option.aliases:
        options["validation_alias"] = AliasChoices(*option.aliases)
    return Field(default=option.default, description=option.doc, **options)


__all__ = ["OPTIONS", "Option", "setting"]
