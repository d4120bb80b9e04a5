"""The diagnostic codes: every :attr:`~llmrerank.types.Diagnostic.code` a rerank can record, and the
sets of them that other parts read (what made a result degrade, what is routine).

The values are the wire format (``results.jsonl``, the server's responses, ``result.summary()``):
a constant's value never changes. :data:`CODES` lists them all with what each says.
"""

from __future__ import annotations

# How a score was read.
SCORE_PARSED = "score_parsed"
SCORE_FROM_LOGPROBS = "score_from_logprobs"
SCORE_UNPARSED = "score_unparsed"
SCORE_MASS_LOW = "score_mass_low"
SCORE_PREFIX_UNRESOLVED = "score_prefix_unresolved"
SCORES_POSITIONAL = "scores_positional"
SCORES_REPAIRED = "scores_repaired"
LOGPROBS_UNUSABLE = "logprobs_unusable"
NO_LOGPROBS = "no_logprobs"
LABEL_UNSEEN = "label_unseen"
# How an order or a choice was read.
PERMUTATION_REPAIRED = "permutation_repaired"
MISSING_APPENDED = "missing_appended"
FALLBACK_INPUT_ORDER = "fallback_input_order"
CHOICE_UNPARSED = "choice_unparsed"
PIVOT_UNPLACED = "pivot_unplaced"
STRATEGY_REPAIRED = "strategy_repaired"
# Calls.
CALL_FAILED = "call_failed"
DEADLINE_EXCEEDED = "deadline_exceeded"
CIRCUIT_OPEN = "circuit_open"
PREFILTER_FAILED = "prefilter_failed"
BASELINE_FAILED = "baseline_failed"
# Fitting prompts to the model.
TRUNCATED = "truncated"
CONTEXT_FITTED = "context_fitted"
CONTEXT_SHRUNK = "context_shrunk"
CONTEXT_TOO_SMALL = "context_too_small"
DOMAIN_IGNORED = "domain_ignored"
# After the LLM: fusion, calibration, diversity.
FUSED = "fused"
FUSION_SKIPPED = "fusion_skipped"
FIRST_STAGE_MISSING = "first_stage_missing"
CALIBRATION_SKIPPED = "calibration_skipped"
DIVERSIFIED = "diversified"
DIVERSITY_FAILED = "diversity_failed"
DUPLICATE = "duplicate"

CODES: dict[str, str] = {
    SCORE_PARSED: "a score read from the answer's text",
    SCORE_FROM_LOGPROBS: "a score computed from the answer's log-probabilities",
    SCORE_UNPARSED: "no score could be read from the answer",
    SCORE_MASS_LOW: "the valid answers held little of the probability; renormalised",
    SCORE_PREFIX_UNRESOLVED: "a score's first token could begin more than one score",
    SCORES_POSITIONAL: "batch scores without labels, read in order",
    SCORES_REPAIRED: "batch scores with repeated or unknown labels",
    LOGPROBS_UNUSABLE: "log-probs no probability has (NaN, +Infinity, above 0): the text was read",
    NO_LOGPROBS: "no log-probabilities from the backend: the generated order was used",
    LABEL_UNSEEN: "labels missing from the top tokens of a first-token answer",
    PERMUTATION_REPAIRED: "an order with unknown, repeated or missing labels, repaired",
    MISSING_APPENDED: "a document an order left out, placed after the ones it named",
    FALLBACK_INPUT_ORDER: "an unreadable order: the window kept its previous order",
    CHOICE_UNPARSED: "no choice could be read from a pairwise or setwise answer",
    PIVOT_UNPLACED: "a top-down answer left out its pivot",
    STRATEGY_REPAIRED: "a strategy returned too few documents; the rest were appended",
    CALL_FAILED: "an LLM call failed after its retries",
    DEADLINE_EXCEEDED: "the rerank's deadline passed with calls unanswered",
    CIRCUIT_OPEN: "calls kept timing out (or the server stopped answering): the rest were not sent",
    PREFILTER_FAILED: "the hybrid strategy's cross-encoder failed",
    BASELINE_FAILED: "query likelihood's empty-passage scoring failed; scores are sums",
    TRUNCATED: "a document cut to the strategy's max_doc_chars",
    CONTEXT_FITTED: "documents cut, or windows made smaller, to fit the model's context",
    CONTEXT_SHRUNK: "a prompt too long for the model, resent shorter",
    CONTEXT_TOO_SMALL: "the model's context held too little for the strategy to work as meant",
    DOMAIN_IGNORED: "the strategy has no instruction to add a domain to",
    FUSED: "the LLM's scores fused with the first-stage scores",
    FUSION_SKIPPED: "fusion skipped (the LLM judged no document)",
    FIRST_STAGE_MISSING: "a document without a usable first-stage score, counted as the lowest",
    CALIBRATION_SKIPPED: "the calibration map did not apply",
    DIVERSIFIED: "maximal marginal relevance reordered the result",
    DIVERSITY_FAILED: "diversity or dedup failed: the reranked order was kept",
    DUPLICATE: "a near-duplicate of a better-ranked document, dropped",
}
"""Every diagnostic code, with what it says."""

UNREADABLE_CODES = frozenset({FALLBACK_INPUT_ORDER, SCORE_UNPARSED, CHOICE_UNPARSED})
"""Codes of answers that held nothing readable (the ``unreadable_answer`` degraded reason)."""

PROBLEM_CODES = (
    CALL_FAILED,
    DEADLINE_EXCEEDED,
    PREFILTER_FAILED,
    FALLBACK_INPUT_ORDER,
    SCORE_UNPARSED,
    CHOICE_UNPARSED,
)
"""Codes that explain a degraded result, most telling first (the first one present is a batch
row's ``degraded_reason``; ``llmrerank eval`` lists them per degraded query)."""

ROUTINE_CODES = frozenset({SCORE_PARSED, SCORE_FROM_LOGPROBS})
"""Per-document codes that only say how a score was read."""
