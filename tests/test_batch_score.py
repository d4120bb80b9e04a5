"""Batch scoring: one call rates a batch of documents 0-10, and no document is lost on a bad answer."""

from __future__ import annotations

import math

import pytest

from llmrerank import BatchScore, ConfigurationError, Hybrid, ParseError, Reranker, Setwise
from llmrerank.errors import RateLimitError
from llmrerank.parsing import parse_labelled_scores
from llmrerank.protocol import Prompt
from llmrerank.testing import FakeBackend, overlap, overlap_judge
from testkit.sample import DOCS, QUERY
from testkit.server import FakeLLMServer, overlap_responder


@pytest.mark.parametrize(
    ("text", "scores", "duplicates", "unknown"),
    [
        ("[1] 7\n[2] 3\n[3] 9", {0: 7.0, 1: 3.0, 2: 9.0}, 0, 0),
        ("[1]: 8/10, [2] - Score: 4", {0: 8.0, 1: 4.0}, 0, 0),
        ("- [1] 7\n- [3] 2.5", {0: 7.0, 2: 2.5}, 0, 0),
        ("<think>[1] 2</think>[1] 5 [2] 6 [3] 7", {0: 5.0, 1: 6.0, 2: 7.0}, 0, 0),
        ('{"1": 7, "[2]": "3"}', {0: 7.0, 1: 3.0}, 0, 0),
        ('{"scores": [{"id": 2, "score": 5}, {"id": 3, "score": 1}]}', {1: 5.0, 2: 1.0}, 0, 0),
        ("Doc: 1, Relevance: 7\nDoc: 2, Relevance: 2", {0: 7.0, 1: 2.0}, 0, 0),
        ("1. 7\n2. 3\n3. 5", {0: 7.0, 1: 3.0, 2: 5.0}, 0, 0),
        ("Document 1: 7/10\nDocument 3: 3/10", {0: 7.0, 2: 3.0}, 0, 0),
        ("［１］ ７\n［２］ ３", {0: 7.0, 1: 3.0}, 0, 0),  # full-width digits
        # Repeated labels keep their first score; unknown labels and out-of-range scores are dropped.
        ("[1] 7\n[1] 8\n[9] 3\n[2] 12", {0: 7.0}, 1, 1),
        ("[3] > [1] > [2]", {}, 0, 0),
        ("no idea", {}, 0, 0),
    ],
)
def test_labelled_scores_are_read_tolerantly(
    text: str, scores: dict[int, float], duplicates: int, unknown: int
) -> None:
    read = parse_labelled_scores(text, 3)
    assert (read.scores, read.duplicates, read.out_of_range, read.positional) == (scores, duplicates, unknown, False)


def test_bare_scores_are_read_in_order_only_when_there_is_one_per_item() -> None:
    assert parse_labelled_scores("7\n3\n9", 3).scores == {0: 7.0, 1: 3.0, 2: 9.0}
    assert parse_labelled_scores("[7, 3, 9]", 3).positional
    assert parse_labelled_scores("7\n3", 3).scores == {}  # which two? not guessed
    assert parse_labelled_scores("I would say 6", 1).scores == {0: 6.0}  # one item: any score is its score


@pytest.mark.parametrize("text", ["[" * 100_000, "{" * 50_000, "[1] " * 30_000, "1: " * 50_000, "1\n" * 50_000])
def test_hostile_answers_parse_without_error(text: str) -> None:
    read = parse_labelled_scores(text, 10)
    assert set(read.scores) <= set(range(10))


def test_batches_are_near_equal_runs_in_input_order() -> None:
    assert [list(b) for b in BatchScore(batch_size=10).batches(21)] == [
        list(range(0, 7)),
        list(range(7, 14)),
        list(range(14, 21)),
    ]
    assert [len(b) for b in BatchScore(batch_size=10).batches(20)] == [10, 10]
    assert BatchScore(batch_size=4).batches(0) == []


def test_one_call_per_batch_ranks_by_the_judges_scores() -> None:
    backend = FakeBackend(respond=overlap_judge)
    docs = DOCS * 5  # 25 documents
    result = Reranker(BatchScore(batch_size=10), backend).rerank(QUERY, docs)
    assert len(backend.calls) == result.usage.calls == 3
    assert sorted(p.user.count("<document id=") for p in backend.calls) == [8, 8, 9]
    assert all(p.user.count(QUERY) == 1 for p in backend.calls)  # the query once per batch
    expected = {i: float(round(10 * overlap(QUERY, d))) for i, d in enumerate(docs)}
    assert result.indices == sorted(range(len(docs)), key=lambda i: (-expected[i], i))
    assert {item.index: item.score for item in result} == expected
    assert result.score_kind == "relevance" and result.status == "reranked" and not result.degraded


def test_the_prompt_puts_instructions_and_query_before_the_documents() -> None:
    backend = FakeBackend(respond=overlap_judge)
    Reranker(BatchScore(), backend, domain="medical").rerank(QUERY, DOCS)
    (prompt,) = backend.calls
    assert prompt.user.index("0 (unrelated) to 10") < prompt.user.index(QUERY) < prompt.user.index("<document")
    assert "biomedical" in prompt.system


def test_a_document_the_answer_leaves_out_is_unjudged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(["[1] 2\n[2] 9\n[4] 5\n[2] 1\n[7] 10"])
    result = Reranker(BatchScore(), backend).rerank(QUERY, DOCS)
    assert result.indices == [1, 3, 0, 2, 4]
    assert [item.score for item in result] == [9.0, 5.0, 2.0, None, None]
    assert [item.fallback for item in result] == [False, False, False, True, True]
    assert result.status == "partial" and result.degraded_reasons == ("unreadable_answer",)
    assert [d.code for d in result[3].diagnostics] == ["score_unparsed"]
    repaired = [d for d in result.diagnostics if d.code == "scores_repaired"]
    assert len(repaired) == 1 and "1 repeated, 1 unknown" in repaired[0].message
    assert "batch_score rerank degraded" in caplog.text


def test_an_unreadable_answer_leaves_the_input_order_and_says_so() -> None:
    result = Reranker(BatchScore(), FakeBackend(["I cannot rate these."])).rerank(QUERY, DOCS)
    assert result.indices == list(range(len(DOCS)))
    assert result.status == "fallback" and result.score_kind == "input_order"
    assert all(item.score is None and item.fallback for item in result)


def test_a_failed_batch_keeps_its_documents_after_the_scored_ones() -> None:
    def respond(prompt: Prompt) -> str:
        if DOCS[0] in prompt.user:
            raise RateLimitError("slow down", status_code=429)
        return overlap_judge(prompt)

    result = Reranker(BatchScore(batch_size=2), FakeBackend(respond=respond)).rerank(QUERY, DOCS)
    assert result.indices[-2:] == [0, 1]  # the first batch failed: input order, last
    assert [item.fallback for item in result][-2:] == [True, True]
    assert result.status == "partial" and "call_failed" in result.degraded_reasons
    assert result.indices[0] == 3


def test_strict_mode_raises_on_a_missing_score() -> None:
    with pytest.raises(ParseError):
        Reranker(BatchScore(), FakeBackend(["[1] 2\n[2] 9"]), strict=True).rerank(QUERY, DOCS)


def test_min_score_drops_documents_rated_below_it() -> None:
    result = Reranker(BatchScore(), FakeBackend(respond=overlap_judge), min_score=5).rerank(QUERY, DOCS)
    assert all(item.score is not None and item.score >= 5 for item in result)
    assert result.dropped and all(d.score is not None and d.score < 5 for d in result.dropped)
    assert sorted(result.indices + [d.index for d in result.dropped]) == list(range(len(DOCS)))


class Overlap:
    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [overlap(q, d) for q, d in pairs]


def test_hybrid_over_batch_scores_in_one_call_and_accepts_min_score() -> None:
    backend = FakeBackend(respond=overlap_judge)
    reranker = Reranker(Hybrid(cross_encoder=Overlap(), keep=3, llm="batch_score"), backend, min_score=1)
    result = reranker.rerank(QUERY, DOCS)
    assert len(backend.calls) == 1 and backend.calls[0].user.count("<document id=") == 3
    assert result.indices[0] == 3 and result.score_kind == "relevance"


def test_a_custom_template_must_keep_the_query_and_the_documents() -> None:
    with pytest.raises(ConfigurationError, match="documents"):
        BatchScore(template="Rate these for {query}.")
    backend = FakeBackend(["[1] 3\n[2] 8"])
    result = Reranker(BatchScore(template="{documents}\nQ={query}"), backend).rerank(QUERY, DOCS[:2])
    assert backend.calls[0].user.startswith('<document id="[1]">') and result.indices == [1, 0]


def test_batch_scoring_through_the_openai_sdk() -> None:
    pytest.importorskip("openai")
    from llmrerank.backends.openai import OpenAIBackend

    with FakeLLMServer(overlap_responder) as srv:
        backend = OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=0)
        result = Reranker("batch_score", backend).rerank(QUERY, DOCS * 4)
        assert len(srv.requests) == math.ceil(20 / 10)
    assert result.indices[0] in (3, 8, 13, 18) and result.status == "reranked"
    assert result.usage.calls == 2 and result.usage.prompt_tokens > 0


@pytest.mark.parametrize("strategy", [BatchScore(max_doc_chars=20_000), Setwise(max_doc_chars=20_000)])
def test_prompts_fit_a_small_known_context(strategy: BatchScore | Setwise) -> None:
    from llmrerank.prompts import estimate_tokens

    backend = FakeBackend(respond=overlap_judge)
    backend.context_tokens = 2048  # room for documents cut above the 400 characters a judgment needs
    docs = [f"dogs bark at night {i} " + "x" * 3000 for i in range(6)]
    result = Reranker(strategy, backend).rerank(QUERY, docs, top_k=3)
    assert backend.calls and all(
        estimate_tokens(p.system) + estimate_tokens(p.user) + p.max_tokens <= 2048 for p in backend.calls
    )
    assert "context_fitted" in {d.code for d in result.diagnostics} and result.status == "reranked"
