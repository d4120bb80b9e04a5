"""The query-likelihood strategy, its Likelihood step and the driver's handling of it, on FakeBackend."""

from __future__ import annotations

import asyncio
import math

import pytest

from llmrerank import (
    BackendError,
    ConfigurationError,
    Hybrid,
    MemoryCache,
    QueryLikelihood,
    Reranker,
    make_strategy,
)
from llmrerank.driver import Driver
from llmrerank.protocol import Completion, Context, LogLikelihood, Ranking
from llmrerank.strategies import Likelihood, uses_likelihood
from llmrerank.strategies.query_likelihood import QUESTION_TEMPLATE
from llmrerank.testing import FakeBackend, overlap_judge, overlap_likelihood
from llmrerank.types import Document
from testkit.sample import BEST_FIRST, DOCS, QUERY


def scorer() -> FakeBackend:
    return FakeBackend(likelihood=overlap_likelihood)


def test_plan_asks_for_the_query_after_each_passage_and_the_empty_passage() -> None:
    docs = [Document(i, t) for i, t in enumerate(DOCS[:2])]
    plan = QueryLikelihood().plan(QUERY, docs, Context())
    step = next(plan)
    assert isinstance(step, Likelihood)
    assert step.pairs == [
        (QUESTION_TEMPLATE.format(document=DOCS[0]), " " + QUERY),
        (QUESTION_TEMPLATE.format(document=DOCS[1]), " " + QUERY),
        (QUESTION_TEMPLATE.format(document=""), " " + QUERY),
    ]
    with pytest.raises(StopIteration) as stop:
        plan.send([LogLikelihood(-9.0, 6), LogLikelihood(-3.0, 6), LogLikelihood(-7.0, 6)])
    ranking: Ranking = stop.value.value
    assert ranking.order == [1, 0] and ranking.score_kind == "likelihood"
    assert ranking.scores == {0: pytest.approx(-2.0), 1: pytest.approx(4.0)}  # minus the baseline -7


@pytest.mark.parametrize("normalization", ["sum", "mean", "pmi"])
def test_every_normalisation_ranks_by_the_likelihood(normalization: str) -> None:
    backend = scorer()
    result = Reranker(QueryLikelihood(normalization=normalization), backend).rerank(QUERY, DOCS)  # type: ignore[arg-type]
    assert result.indices == BEST_FIRST and result.score_kind == "likelihood" and not result.degraded
    raw = {i: overlap_likelihood(QUESTION_TEMPLATE.format(document=d), " " + QUERY) for i, d in enumerate(DOCS)}
    tokens = len(QUERY.split())
    baseline = overlap_likelihood(QUESTION_TEMPLATE.format(document=""), " " + QUERY)
    expected = {
        "sum": raw,
        "mean": {i: v / tokens for i, v in raw.items()},
        "pmi": {i: v - baseline for i, v in raw.items()},
    }[normalization]
    assert {item.index: item.score for item in result} == pytest.approx(expected)
    assert len(backend.pairs) == len(DOCS) + (normalization == "pmi")
    assert result.usage.calls == len(backend.pairs) and result.usage.completion_tokens == 0
    assert result.usage.prompt_tokens > 0


def test_a_failed_scoring_leaves_its_document_unscored_and_last() -> None:
    def flaky(context: str, continuation: str) -> float:
        if "strangers" in context:
            raise RuntimeError("boom")
        return overlap_likelihood(context, continuation)

    result = Reranker(QueryLikelihood(normalization="sum"), FakeBackend(likelihood=flaky)).rerank(QUERY, DOCS)
    assert result.indices[-1] == 1 and result[-1].score is None
    assert result.degraded and result.usage.failed_calls == 1
    assert [d.code for d in result[-1].diagnostics] == ["call_failed"]
    with pytest.raises(BackendError, match="boom"):
        Reranker(QueryLikelihood(), FakeBackend(likelihood=flaky), on_error="raise").rerank(QUERY, DOCS)


def test_a_failed_baseline_falls_back_to_sums_and_says_so() -> None:
    def no_baseline(context: str, continuation: str) -> float:
        if context == QUESTION_TEMPLATE.format(document=""):
            raise RuntimeError("baseline down")
        return overlap_likelihood(context, continuation)

    result = Reranker(QueryLikelihood(), FakeBackend(likelihood=no_baseline)).rerank(QUERY, DOCS)
    assert result.indices == BEST_FIRST
    assert "baseline_failed" in {d.code for d in result.diagnostics}
    assert result[0].score == pytest.approx(overlap_likelihood(QUESTION_TEMPLATE.format(document=DOCS[3]), " " + QUERY))


def test_scorings_are_cached_like_prompts() -> None:
    backend, cache = scorer(), MemoryCache()
    reranker = Reranker(QueryLikelihood(), backend, cache=cache)
    first = reranker.rerank(QUERY, DOCS)
    asked = len(backend.pairs)
    second = reranker.rerank(QUERY, DOCS)
    assert len(backend.pairs) == asked  # nothing asked again
    assert second.usage.calls == 0 and second.usage.cached_calls == len(DOCS) + 1
    assert [(i.index, i.score) for i in second] == [(i.index, i.score) for i in first]
    # Other normalisations reuse the same scorings.
    Reranker(QueryLikelihood(normalization="mean"), backend, cache=cache).rerank(QUERY, DOCS)
    assert len(backend.pairs) == asked


def test_stored_likelihoods_round_trip_and_other_completions_do_not_pass() -> None:
    value = LogLikelihood(-3.25, 4, 120)
    assert LogLikelihood.from_completion(value.as_completion()) == value
    with pytest.raises(ValueError):
        LogLikelihood.from_completion(Completion("7"))


def test_domain_is_reported_as_ignored_and_long_documents_as_cut() -> None:
    result = Reranker(QueryLikelihood(max_doc_chars=40), scorer(), domain="medical").rerank(QUERY, DOCS)
    codes = [d.code for d in result.diagnostics]
    assert "domain_ignored" in codes
    assert {d.index for d in result.diagnostics if d.code == "truncated"} == {3}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"normalization": "max"}, "normalization"),
        ({"max_doc_chars": 0}, "max_doc_chars"),
        ({"template": "Passage without a slot"}, "{document}"),
    ],
)
def test_options_are_validated(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        QueryLikelihood(**options)  # type: ignore[arg-type]


def test_custom_template_is_used() -> None:
    backend = scorer()
    Reranker(QueryLikelihood(template="Doc: {document}\nQuery:"), backend).rerank(QUERY, DOCS[:1])
    assert backend.pairs[0] == ("Doc: The cat sat on the mat.\nQuery:", " " + QUERY)


def test_backends_that_cannot_score_text_are_refused_when_the_reranker_is_built() -> None:
    plain = FakeBackend(respond=overlap_judge)
    for strategy in ("query_likelihood", QueryLikelihood(), Hybrid(cross_encoder=object(), llm="query_likelihood")):
        with pytest.raises(ConfigurationError, match="log P\\(query \\| document\\)"):
            Reranker(strategy, plain)
    prefers_it = FakeBackend(respond=overlap_judge, preferred_strategy="query_likelihood")
    with pytest.raises(ConfigurationError, match="LocalBackend"):
        Reranker(Hybrid(cross_encoder=object()), prefers_it)
    assert not uses_likelihood(Hybrid(cross_encoder=object()), "listwise")
    assert make_strategy("query_likelihood") == QueryLikelihood()


async def test_driver_refuses_a_likelihood_step_on_a_backend_without_it() -> None:
    def plan():  # type: ignore[no-untyped-def]
        yield Likelihood([("a", " b")])
        return Ranking([0], "likelihood")

    driver = Driver(FakeBackend(respond=overlap_judge), asyncio.Semaphore(1))
    with pytest.raises(ConfigurationError, match="supports_likelihood"):
        await driver.run(plan())


async def test_deadline_and_concurrency_bound_the_scorings() -> None:
    slow = FakeBackend(likelihood=overlap_likelihood, delay=0.5)
    result = await Reranker(QueryLikelihood(), slow, deadline=0.1).arerank(QUERY, DOCS)
    assert result.degraded and "deadline_exceeded" in {d.code for d in result.diagnostics}
    assert sorted(result.indices) == list(range(len(DOCS)))

    paced = FakeBackend(likelihood=overlap_likelihood, delay=0.01)
    reranker = Reranker(QueryLikelihood(), paced, max_concurrency=2)
    results = await asyncio.gather(*(reranker.arerank(QUERY, DOCS) for _ in range(3)))
    assert all(r.indices == BEST_FIRST for r in results)
    assert len(paced.pairs) == 3 * (len(DOCS) + 1)


def test_scores_are_log_probabilities_of_the_fake_model() -> None:
    result = Reranker(QueryLikelihood(normalization="sum"), scorer()).rerank(QUERY, DOCS)
    assert all(item.score is not None and item.score <= math.log(1.05) for item in result)
