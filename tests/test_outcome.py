"""The result builder (llmrerank.outcome) is pure: a ranking and the driver's counters in, the
status, degraded reasons and frozen result out, with no backend and no event loop."""

from __future__ import annotations

from llmrerank.driver import Meter
from llmrerank.errors import BackendError
from llmrerank.outcome import assess, build_result, complete, drop_below, ranked_documents
from llmrerank.protocol import Ranking
from llmrerank.types import Diagnostic, Usage

DOCS = ["a", "b", "c"]


def test_a_clean_ranking_is_reranked_and_numbered_from_one() -> None:
    ranking = Ranking([2, 0, 1], "relevance", {0: 5.0, 1: 1.0, 2: 9.0})
    outcome = assess(ranking, Meter(calls=3), 3, "pointwise", None)
    assert (outcome.status, outcome.reasons, outcome.degraded, outcome.warning) == ("reranked", (), False, None)
    result = build_result(
        "q", "pointwise", outcome, ranked_documents(ranking, DOCS, outcome), top_k=2, usage=Usage(), model="m"
    )
    assert [(d.document, d.rank, d.score) for d in result] == [("c", 1, 9.0), ("a", 2, 5.0)]
    assert result.model == "m" and not result.degraded


def test_a_document_no_answer_placed_degrades_even_without_a_diagnostic() -> None:
    ranking = Ranking([0, 1, 2], "relevance", {0: 5.0, 1: 4.0}, unjudged={2})
    outcome = assess(ranking, Meter(calls=3), 3, "pointwise", None)
    assert (outcome.status, outcome.reasons) == ("partial", ("unreadable_answer",))
    assert outcome.warning is not None and "1 of 3 documents keep a fallback place" in outcome.warning
    assert [d.fallback for d in ranked_documents(ranking, DOCS, outcome)] == [False, False, True]


def test_every_call_failing_falls_back_to_the_input_order_and_names_the_error() -> None:
    meter = Meter(calls=3, failed_calls=3, errors=[BackendError("HTTP 503")], deadline_hit=True, circuit_open=True)
    ranking = Ranking([0, 1, 2], "relevance", unjudged={0, 1, 2})
    outcome = assess(ranking, meter, 3, "listwise", 2.0)
    assert (outcome.status, outcome.score_kind) == ("fallback", "input_order")
    assert outcome.reasons == ("call_failed", "deadline_exceeded")
    assert [d.code for d in outcome.diagnostics] == ["deadline_exceeded", "circuit_open"]
    assert "3 of 3 calls failed, first BackendError" in (outcome.warning or "")


def test_thresholds_drop_only_scored_documents_on_their_own_scale() -> None:
    ranking = Ranking([0, 1, 2], "relevance", {0: 8.0, 1: 2.0}, unjudged={2})
    ranked = ranked_documents(ranking, DOCS, assess(ranking, Meter(), 3, "pointwise", None))
    kept, dropped = drop_below(ranked, "relevance", 5.0, None)
    assert [d.document for d in kept] == ["a", "c"] and [d.document for d in dropped] == ["b"]
    assert drop_below(ranked, "rank", 5.0, None) == (ranked, [])
    assert drop_below(ranked, "probability", 5.0, None) == (ranked, [])


def test_a_strategy_that_loses_documents_is_completed_with_a_diagnostic() -> None:
    ranking = complete(Ranking([1, 1, 7], "rank", diagnostics=[Diagnostic("fused")]), 3)
    assert ranking.order == [1, 0, 2] and ranking.diagnostics[-1].code == "strategy_repaired"
