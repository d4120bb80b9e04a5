"""The rerank APIs clients already speak: reading their requests, writing their answers and errors.

- Cohere v2 ``POST /v2/rerank``: ``model``, ``query``, ``documents`` (strings), ``top_n``,
  ``max_tokens_per_doc`` -> ``{id, results: [{index, relevance_score}], meta}``.
- Cohere v1 ``POST /v1/rerank``: documents as strings or ``{"text": ...}`` objects,
  ``return_documents`` -> results with ``document: {text}`` when asked. Jina's request is the same
  shape on the same path; the answer carries Jina's fields too (``model``, ``usage.total_tokens``),
  so either client reads it. Errors there carry Cohere's ``message`` and Jina's ``detail``.
- TEI ``POST /rerank``: ``query``, ``texts``, ``raw_scores``, ``return_text``, ``truncate`` ->
  ``[{index, score, text?}]`` (TEI's errors: ``{error, error_type}``).

``relevance_score`` (:func:`relevance_scores`) is the model's judgment mapped to [0, 1] where the
strategy gives one; otherwise it is derived from the rank, and ``meta.llmrerank.score_source`` and
the ``x-llmrerank-score-source`` header say ``rank``.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidInputError
from ..types import RerankResult

Api = Literal["cohere-v1", "cohere-v2", "tei"]

MODEL_SCORED = frozenset({"relevance", "logprob", "win_rate", "first_token", "likelihood"})
"""Score kinds that are a model judgment; the others (rank, fused, cross_encoder, input_order) are
answered with a rank-derived relevance_score."""

CHARS_PER_TOKEN = 4
"""``max_tokens_per_doc`` cuts each document to this many characters a token (an estimate: the
LLM's tokenizer is not known here)."""


@dataclass(frozen=True)
class RerankRequest:
    """One request, whichever API it came in: what the reranker needs and how to answer."""

    api: Api
    model: str
    query: str
    texts: list[str]
    top_n: int | None = None
    return_documents: bool = False
    raw_scores: bool = False
    instruction: str | None = None
    first_stage: list[float] | None = None
    """Scores the client sent with its documents (``{"text": ..., "score": ...}``), when all have one."""
    cut: int = 0
    """Documents cut to ``max_tokens_per_doc``."""


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInputError(f"{key} must be true or false, got {value!r}")
    return value


def _positive(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{key} must be an integer >= 1, got {value!r}")
    return value


def _document_text(doc: Any, index: int, key: str) -> tuple[str, float | None]:
    if isinstance(doc, str):
        return doc, None
    if isinstance(doc, Mapping):
        text = doc.get("text")
        if not isinstance(text, str):
            raise InvalidInputError(f"{key}[{index}] must be a string or an object with a string 'text'")
        score = doc.get("score")
        number = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None
        return text, number if number is not None and math.isfinite(number) else None
    raise InvalidInputError(f"{key}[{index}] must be a string, got {type(doc).__name__}")


def parse_request(api: Api, body: Any, default_model: str) -> RerankRequest:
    """The :class:`RerankRequest` in a decoded JSON ``body``; :class:`InvalidInputError` (400) for
    anything a client must fix (the reranker checks the query and the documents again)."""
    if not isinstance(body, Mapping):
        raise InvalidInputError("the request body must be a JSON object")
    model = body.get("model", default_model) if api != "tei" else default_model
    if model is None:
        model = default_model
    if not isinstance(model, str) or not model:
        raise InvalidInputError(f"model must be a non-empty string, got {model!r}")
    query = body.get("query")
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
    key = "texts" if api == "tei" else "documents"
    docs = body.get(key)
    if not isinstance(docs, list):
        raise InvalidInputError(f"{key} must be a list, got {type(docs).__name__}")
    if api == "cohere-v2" and not all(isinstance(d, str) for d in docs):
        raise InvalidInputError("documents must be strings on /v2/rerank (objects: use /v1/rerank)")
    pairs = [_document_text(d, i, key) for i, d in enumerate(docs)]
    texts = [text for text, _ in pairs]
    scores = [score for _, score in pairs]
    first_stage = [s for s in scores if s is not None] if scores and all(s is not None for s in scores) else None
    cut = 0
    limit = _positive(body, "max_tokens_per_doc")
    if limit is not None:
        chars = limit * CHARS_PER_TOKEN
        cut = sum(len(t) > chars for t in texts)
        texts = [t[:chars] for t in texts]
    instruction = body.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InvalidInputError("instruction must be a string")
    if api == "tei":
        return RerankRequest(
            api,
            model,
            query,
            texts,
            return_documents=_bool(body, "return_text", False),
            raw_scores=_bool(body, "raw_scores", False),
            instruction=instruction,
        )
    return RerankRequest(
        api,
        model,
        query,
        texts,
        top_n=_positive(body, "top_n"),
        return_documents=_bool(body, "return_documents", False),
        instruction=instruction,
        first_stage=first_stage,
        cut=cut,
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def to_unit(kind: str, score: float, normalization: str = "pmi") -> float:
    """A model score of ``kind`` mapped to [0, 1], higher more relevant.

    0-10 ratings (``relevance``, ``logprob``) are divided by 10; win rates and first-token
    probabilities (``win_rate``, ``first_token``) are already in [0, 1]; query likelihood with
    ``pmi`` is ``sigmoid(pmi)`` = P(q|d) / (P(q|d) + P(q|no passage)), so 0.5 means the document
    does not change the query's probability; with ``sum``/``mean`` it is ``exp`` of the log-probability.
    """
    if kind in ("relevance", "logprob"):
        value = score / 10.0
    elif kind == "likelihood":
        value = _sigmoid(score) if normalization == "pmi" else math.exp(min(score, 0.0))
    else:
        value = score
    return min(1.0, max(0.0, value))


def relevance_scores(result: RerankResult[Any], total: int, normalization: str = "pmi") -> tuple[list[float], str]:
    """One ``relevance_score`` per returned item, and where they come from: ``model`` or ``rank``.

    Model scores are mapped by :func:`to_unit`; a document the model did not judge (a fallback
    place in a partial rerank) gets 0.0. When the strategy gives no score (listwise, pairwise sort),
    when scores are fused or when the mapped scores would not fall with the order (window-relative
    probabilities of a sliding listwise), the score is rank-derived: ``(total - rank + 1) / total``,
    1.0 for the first of ``total`` input documents.
    """
    kind = result.score_kind
    if kind in MODEL_SCORED and any(item.score is not None for item in result):
        mapped = [0.0 if item.score is None else to_unit(kind, item.score, normalization) for item in result]
        if all(a >= b for a, b in itertools.pairwise(mapped)):
            return mapped, "model"
    return [(total - item.rank + 1) / max(total, 1) for item in result], "rank"


def usage_tokens(result: RerankResult[Any]) -> tuple[int, int]:
    """Prompt and completion tokens the rerank spent."""
    return result.usage.prompt_tokens, result.usage.completion_tokens


def extension(
    result: RerankResult[Any], name: str, source: str, request: RerankRequest, cost: float | None
) -> dict[str, Any]:
    """``meta.llmrerank``: what produced the order, whether it degraded and why, and what it spent."""
    usage = result.usage
    return {
        "name": name,
        "strategy": result.strategy,
        "model": result.model,
        "score_kind": result.score_kind,
        "score_source": source,
        "status": result.status,
        "degraded": result.degraded,
        "degraded_reasons": list(result.degraded_reasons),
        "fallback": [item.index for item in result if item.fallback],
        "calls": usage.calls,
        "cached_calls": usage.cached_calls,
        "failed_calls": usage.failed_calls,
        "estimated_cost_usd": cost,
        "documents_cut": request.cut,
    }


def warnings(result: RerankResult[Any]) -> list[str]:
    """Cohere's ``meta.warnings``: a sentence when the order is (partly) not the model's."""
    if not result.degraded:
        return []
    return [
        f"llmrerank: rerank {result.status} ({', '.join(result.degraded_reasons)}): "
        "documents marked in meta.llmrerank.fallback keep their input order"
    ]


Scored = tuple[list[float], str]
"""What :func:`relevance_scores` gives: one score per returned item, and their source."""


def cohere_body(
    request: RerankRequest, result: RerankResult[Any], name: str, cost: float | None, scored: Scored
) -> dict[str, Any]:
    """The Cohere (v1 or v2) answer; on v1 also Jina's ``model`` and ``usage``."""
    scores, source = scored
    results = []
    for item, score in zip(result, scores, strict=True):
        row: dict[str, Any] = {"index": item.index, "relevance_score": score}
        if request.return_documents and request.api == "cohere-v1":
            row["document"] = {"text": request.texts[item.index]}
        results.append(row)
    prompt, completion = usage_tokens(result)
    meta: dict[str, Any] = {
        "api_version": {"version": "2" if request.api == "cohere-v2" else "1"},
        "billed_units": {"input_tokens": prompt, "output_tokens": completion},
        "tokens": {"input_tokens": prompt, "output_tokens": completion},
        "llmrerank": extension(result, name, source, request, cost),
    }
    notes = warnings(result)
    if notes:
        meta["warnings"] = notes
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "results": results, "meta": meta}
    if request.api == "cohere-v1":
        body["model"] = name
        body["usage"] = {"total_tokens": prompt + completion, "prompt_tokens": prompt}
    return body


def tei_body(request: RerankRequest, result: RerankResult[Any], scored: Scored) -> list[dict[str, Any]]:
    """TEI's answer, best first. ``raw_scores`` gives the strategy's own score (0-10 rating,
    log-likelihood, ...) where it has one, else the rank-derived score."""
    scores, source = scored
    rows = []
    for item, score in zip(result, scores, strict=True):
        value = item.score if request.raw_scores and source == "model" and item.score is not None else score
        row: dict[str, Any] = {"index": item.index, "score": value}
        if request.return_documents:
            row["text"] = request.texts[item.index]
        rows.append(row)
    return rows


def headers(result: RerankResult[Any], name: str, source: str) -> dict[str, str]:
    """Response headers that say what the scores are (``source``: ``model`` or ``rank``) and
    whether the rerank degraded."""
    out = {
        "x-llmrerank-model": name,
        "x-llmrerank-strategy": result.strategy,
        "x-llmrerank-status": result.status,
        "x-llmrerank-score-kind": result.score_kind,
        "x-llmrerank-score-source": source,
    }
    if result.degraded:
        out["x-llmrerank-degraded"] = ",".join(result.degraded_reasons) or "degraded"
    return out


TEI_ERROR_TYPES = {400: "Validation", 401: "Unauthorized", 404: "Validation", 413: "Validation", 429: "Overloaded"}


def error_body(api: Api | None, status: int, message: str) -> Any:
    """The error JSON each API's clients read: Cohere ``{message}`` (plus Jina's ``detail`` on v1),
    TEI ``{error, error_type}``."""
    if api == "tei":
        return {"error": message, "error_type": TEI_ERROR_TYPES.get(status, "Backend")}
    if api == "cohere-v1":
        return {"message": message, "detail": message}
    return {"message": message}


def model_list(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models``: the OpenAI/vLLM ``data`` list and Cohere's ``models`` list."""
    return {
        "object": "list",
        "data": [{"id": e["name"], "object": "model", "owned_by": "llmrerank", **e} for e in entries],
        "models": [{"name": e["name"], "endpoints": ["rerank"]} for e in entries],
    }
