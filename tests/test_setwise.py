"""Setwise: the model picks the best of a set, a heap sort finds the top-k with few calls."""

from __future__ import annotations

import math
import random
import re

import pytest

from llmrerank import ConfigurationError, Pairwise, ParseError, Reranker, Setwise
from llmrerank.errors import RateLimitError
from llmrerank.inputs import normalize_documents
from llmrerank.protocol import Completion, Context, Prompt, Ranking
from llmrerank.testing import FakeBackend, overlap_judge, overlap_logprobs

QUERY = "why do dogs bark at night"
BLOCK = re.compile(r'<document id="([A-Z])">\n(.*?)\n</document>', re.DOTALL)


def hidden_order_judge(worth: dict[str, float]) -> FakeBackend:
    """A judge that knows each document's worth (by its text) and names the best label."""

    def respond(prompt: Prompt) -> str:
        blocks = BLOCK.findall(prompt.user)
        return max(blocks, key=lambda block: worth[block[1]])[0]

    return FakeBackend(respond=respond)


@pytest.mark.parametrize("set_size", [2, 3, 4, 5, 8])
@pytest.mark.parametrize(("n", "k"), [(2, 1), (7, 3), (20, 10), (33, 5), (50, None)])
def test_the_top_k_is_exact_and_the_rest_keeps_its_order(set_size: int, n: int, k: int | None) -> None:
    rng = random.Random(n * 31 + set_size)
    docs = [f"document number {i}" for i in range(n)]
    worth = {d: rng.random() for d in docs}
    backend = hidden_order_judge(worth)
    result = Reranker(Setwise(set_size=set_size), backend).rerank(QUERY, docs)
    best = sorted(range(n), key=lambda i: -worth[docs[i]])
    top = n if k is None else k
    ranked = Reranker(Setwise(set_size=set_size), hidden_order_judge(worth)).rerank(QUERY, docs, top_k=k)
    assert ranked.indices == best[:top]
    assert result.indices == best  # top_k None sorts everything
    assert all(p.user.count("<document id=") <= set_size for p in backend.calls)
    assert ranked.score_kind == "rank" and all(item.score is None for item in ranked)
    assert ranked.status == "reranked"


def test_documents_below_the_top_k_follow_in_first_stage_order() -> None:
    docs = [f"document number {i}" for i in range(12)]
    worth = {d: float(i % 5) + i / 100 for i, d in enumerate(docs)}  # best: 9, then 4
    judge = hidden_order_judge(worth)
    plan = Setwise(set_size=3).plan(QUERY, normalize_documents(docs), Context(top_k=2))
    answers = None
    try:
        while True:
            step = plan.send(answers)
            assert isinstance(step, list)
            answers = [Completion(str(judge.respond(p) if judge.respond else "")) for p in step]
    except StopIteration as stop:
        ranking: Ranking = stop.value
    assert ranking.order == [9, 4] + [i for i in range(12) if i not in (4, 9)]
    assert ranking.score_kind == "rank" and not ranking.scores and not ranking.unjudged


def test_far_fewer_calls_than_pairwise_sort() -> None:
    rng = random.Random(7)
    docs = [f"document number {i}" for i in range(100)]
    worth = {d: rng.random() for d in docs}
    setwise, pairwise = hidden_order_judge(worth), hidden_order_judge(worth)
    Reranker(Setwise(), setwise).rerank(QUERY, docs, top_k=10)
    Reranker(Pairwise(mode="sort"), pairwise).rerank(QUERY, docs, top_k=10)
    # Heap build plus ten sift-downs: about n/(c-1) + k*log_{c-1}(n) calls.
    assert len(setwise.calls) <= 100 / 3 + 10 * math.log(100, 3) + 10
    assert len(setwise.calls) * 4 < len(pairwise.calls)


def test_the_heap_is_built_with_concurrent_calls() -> None:
    backend = FakeBackend(respond=overlap_judge, delay=0.001)
    Reranker(Setwise(set_size=3), backend, max_concurrency=64).rerank(QUERY, [f"doc {i} dogs" for i in range(40)])
    assert backend.max_in_flight > 1


def test_log_probabilities_over_the_labels_pick_the_winner() -> None:
    docs = ["Birds sing.", "Cats sleep.", "Why do dogs bark at night? Dogs bark at night.", "Trains run."]
    backend = FakeBackend(respond=lambda p: "A", logprobs=overlap_logprobs)  # the text always says A
    result = Reranker(Setwise(), backend).rerank(QUERY, docs, top_k=1)
    assert result.indices == [2]
    assert all(p.choices == tuple("ABCD"[: p.user.count("<document id=")]) for p in backend.calls)
    text_only = FakeBackend(respond=lambda p: "A", logprobs=overlap_logprobs)
    assert Reranker(Setwise(use_logprobs=False), text_only).rerank(QUERY, docs, top_k=1).indices == [0]
    assert all(p.choices is None for p in text_only.calls)


def test_equally_likely_labels_keep_the_first_stage_order() -> None:
    docs = ["Birds sing.", "Cats sleep.", "Dogs bark at night.", "Trains run.", "Dogs bark at night!", "Dogs bark."]
    for order in (list(range(6)), [5, 4, 3, 2, 1, 0]):
        backend = FakeBackend(respond=lambda p: "A", logprobs=overlap_logprobs)
        result = Reranker(Setwise(set_size=3), backend).rerank(QUERY, [docs[i] for i in order], top_k=2)
        tied = [order.index(2), order.index(4)]  # the same words: the same probability
        assert result.indices == sorted(tied)


def test_unreadable_answers_decide_nothing_and_say_so() -> None:
    docs = [f"document number {i}" for i in range(9)]
    result = Reranker(Setwise(), FakeBackend(respond=lambda p: "I cannot tell.")).rerank(QUERY, docs, top_k=3)
    assert result.indices == [0, 1, 2]
    assert result.status == "fallback" and result.score_kind == "input_order"
    assert all(item.fallback and item.score is None for item in result)
    assert any(d.code == "choice_unparsed" for d in result.diagnostics)


def test_failed_calls_fall_back_to_first_stage_order_for_their_sets(caplog: pytest.LogCaptureFixture) -> None:
    docs = ["Cats sleep.", "Birds sing.", "Dogs bark at night.", "Trains run.", "Why do dogs bark at night?"]

    def respond(prompt: Prompt) -> str:
        if "Trains" in prompt.user:
            raise RateLimitError("slow down", status_code=429)
        return overlap_judge(prompt)

    result = Reranker(Setwise(set_size=2), FakeBackend(respond=respond)).rerank(QUERY, docs)
    assert sorted(result.indices) == list(range(5))
    assert result.status == "partial" and "call_failed" in result.degraded_reasons
    # The document every call about it failed on is not placed by the model: it is marked, not lost.
    assert [item.index for item in result if item.fallback] == [3]
    assert result[0].index in (2, 4)
    assert "setwise rerank degraded" in caplog.text


def test_strict_mode_raises_on_an_unreadable_answer() -> None:
    with pytest.raises(ParseError):
        Reranker(Setwise(), FakeBackend(["no idea"]), strict=True).rerank(QUERY, ["a b", "c d", "e f"])


def test_no_min_score_for_an_order() -> None:
    with pytest.raises(ConfigurationError, match="min_score"):
        Reranker(Setwise(), FakeBackend(), min_score=5)


def test_a_custom_template_must_keep_the_query_and_the_documents() -> None:
    with pytest.raises(ConfigurationError, match="documents"):
        Setwise(template="Best for {query}?")


def test_one_document_needs_no_call() -> None:
    backend = FakeBackend()
    result = Reranker(Setwise(), backend).rerank(QUERY, ["only one"])
    assert result.indices == [0] and not backend.calls
