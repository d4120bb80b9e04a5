"""Issue 23's methods on the loopback server: the biased judge, permutation self-consistency for
listwise, top-down partitioning."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator, Sequence

import pytest

from llmrerank import ConfigurationError, Listwise, MemoryCache, Reranker, TopDown
from llmrerank.cli import build_parser, strategies_from
from llmrerank.protocol import Completion, Prompt
from llmrerank.routing import make_strategy_object
from llmrerank.strategies import STRATEGIES, make_strategy
from llmrerank.testing import FakeBackend, read_prompt
from llmrerank.types import Document
from testkit.server import BiasedJudge, FakeLLMServer, ServerRequest

pytest.importorskip("openai")

from llmrerank.backends.openai import OpenAIBackend
from llmrerank.protocol import Context

QUERY = "which passage is relevant"


def corpus(seed: int, n: int, *, informative: bool = False) -> tuple[list[str], dict[str, float]]:
    """``n`` passages and their true grades (0-3): random, or falling with the first-stage order."""
    rng = random.Random(seed)
    docs = [f"passage {seed}-{i} about topic {rng.randrange(1000)}" for i in range(n)]
    grades = [3 * (1 - i / n) + rng.gauss(0, 0.7) if informative else rng.uniform(0, 3) for i in range(n)]
    return docs, dict(zip(docs, grades, strict=True))


def kendall(order: Sequence[str], grades: dict[str, float]) -> float:
    """Kendall's tau between ``order`` and the order by true grade."""
    agree = disagree = 0
    for a, b in itertools.combinations(order, 2):
        agree += grades[a] > grades[b]
        disagree += grades[a] < grades[b]
    return (agree - disagree) / max(1, agree + disagree)


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def backend(server: FakeLLMServer) -> OpenAIBackend:
    return OpenAIBackend("fake-model", base_url=server.base_url, api_key="test")


# --- the biased judge ------------------------------------------------------------------------------


def request(user: str, logprobs: bool = False) -> ServerRequest:
    return ServerRequest("openai", "POST", "/v1/chat/completions", user=user, logprobs=logprobs)


def window_prompt(texts: Sequence[str]) -> str:
    return Listwise().prompt(QUERY, texts, Context()).user


def test_biased_judge_prefers_what_it_is_shown_first() -> None:
    grades = {"good one": 1.0, "weak one": 0.6}
    judge = BiasedJudge(lambda q, t: grades[t], bias=0.5)
    assert judge(request(window_prompt(["good one", "weak one"]))).text == "[1] > [2]"
    # Shown second, the better document loses: 1.0 < 0.6 + 0.5.
    assert judge(request(window_prompt(["weak one", "good one"]))).text == "[1] > [2]"
    fair = BiasedJudge(lambda q, t: grades[t], bias=0.0)
    assert fair(request(window_prompt(["weak one", "good one"]))).text == "[2] > [1]"


def test_biased_judge_noise_is_seeded_per_prompt() -> None:
    texts = [f"doc {i}" for i in range(8)]
    user = window_prompt(texts)
    answers = {BiasedJudge(bias=0.2, noise=1.0, seed=s).answer(Prompt("", user)) for s in range(6)}
    assert len(answers) > 1  # the seed changes the noise
    judge = BiasedJudge(bias=0.2, noise=1.0, seed=3)
    assert judge.answer(Prompt("", user)) == judge.answer(Prompt("", user))  # the same prompt, the same answer
    query, blocks = read_prompt(user)
    assert query == QUERY and [t for _, t in blocks] == texts


def test_biased_judge_answers_ratings_and_log_probs() -> None:
    judge = BiasedJudge(lambda q, t: 2.0, bias=1.0, max_grade=4.0)
    rating = make_strategy("pointwise", method="generate")
    plan = rating.plan(QUERY, [Document(0, "one passage")], Context())
    (prompt,) = next(plan)
    assert judge.answer(prompt) == "5"  # 2 of 4, and no position bias for a single document
    reply = judge(request(window_prompt(["a", "b", "c"]), logprobs=True))
    assert reply.top_logprobs is not None and set(reply.top_logprobs) == {"1", "2", "3"}
    assert reply.text == "1"  # the same grades: the position bonus decides
    with pytest.raises(ValueError, match="bias"):
        BiasedJudge(bias=-1)


# --- permutation self-consistency ------------------------------------------------------------------


def test_self_consistency_sends_k_seeded_shuffles_at_once(server: FakeLLMServer) -> None:
    docs, grades = corpus(1, 10)
    server.responder = BiasedJudge(lambda q, t: grades[t], bias=1.0, max_grade=3)
    server.latency = 0.2
    cache = MemoryCache()
    reranker = Reranker(Listwise(self_consistency=3), backend(server), cache=cache)
    result = reranker.rerank(QUERY, docs)
    assert result.usage.calls == 3 and server.max_in_flight == 3  # one round of three calls
    shown = [[t for _, t in read_prompt(r.user)[1]] for r in server.requests]
    assert docs in shown and all(sorted(s) == sorted(docs) for s in shown) and len({tuple(s) for s in shown}) == 3
    assert result.score_kind == "borda" and result.status == "reranked"
    scores = [item.score for item in result]
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    # The shuffles are seeded: a second rerank sends the same prompts, all answered by the cache.
    again = reranker.rerank(QUERY, docs)
    assert again.usage.calls == 0 and again.usage.cached_calls == 3 and again.indices == result.indices
    other_seed = Reranker(Listwise(self_consistency=3, seed=1), backend(server)).rerank(QUERY, docs)
    assert other_seed.usage.calls == 3
    assert [r.user for r in server.requests[3:]] != [r.user for r in server.requests[:3]]


def test_self_consistency_recovers_more_of_the_true_order_than_one_pass(server: FakeLLMServer) -> None:
    """On a judge that favours what it is shown first, shuffled passes cancel the bias out."""
    taus: dict[int, list[float]] = {1: [], 3: [], 5: []}
    for seed in range(12):
        docs, grades = corpus(seed, 10)
        server.responder = BiasedJudge(lambda q, t, g=grades: g[t], bias=1.5, noise=0.3, seed=seed, max_grade=3)
        for k in taus:
            result = Reranker(Listwise(self_consistency=k, seed=seed), backend(server)).rerank(QUERY, docs)
            taus[k].append(kendall(result.documents, grades))
    mean = {k: sum(v) / len(v) for k, v in taus.items()}
    assert mean[1] + 0.05 < mean[3] < mean[5], mean
    assert sum(t5 > t1 for t1, t5 in zip(taus[1], taus[5], strict=True)) >= 10, taus


def test_self_consistency_aggregates_the_passes_that_answered() -> None:
    docs = ["alpha doc", "beta doc", "gamma doc", "delta doc"]
    texts: list[list[str]] = []

    def answer(prompt: Prompt) -> str:
        shown = [t for _, t in read_prompt(prompt.user)[1]]
        texts.append(shown)
        if len(texts) == 2:
            raise RuntimeError("boom")
        if len(texts) == 3:
            return "no idea"
        return " > ".join(f"[{shown.index(d) + 1}]" for d in ["gamma doc", "alpha doc", "delta doc", "beta doc"])

    backend = FakeBackend(respond=answer)
    result = Reranker(Listwise(self_consistency=4), backend, on_error="degrade_all").rerank(QUERY, docs)
    assert result.documents == ["gamma doc", "alpha doc", "delta doc", "beta doc"]
    assert [item.score for item in result] == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0]
    codes = [d.code for d in result.diagnostics]
    assert "call_failed" in codes and "fallback_input_order" in codes
    assert result.status == "partial" and "call_failed" in result.degraded_reasons
    assert not any(item.fallback for item in result)  # two passes placed every document


def test_self_consistency_with_every_pass_failing_keeps_the_order() -> None:
    backend = FakeBackend(respond=lambda p: "nothing readable")
    result = Reranker(Listwise(self_consistency=3), backend).rerank(QUERY, ["a", "b", "c"])
    assert result.indices == [0, 1, 2] and result.status == "fallback" and result.score_kind == "input_order"
    assert all(item.score is None and item.fallback for item in result)


def test_self_consistency_partial_answers_share_the_points_left() -> None:
    lw = Listwise(self_consistency=2)
    shown = lw.shown([0, 1, 2, 3], 0)
    # Pass 1 names two documents only; pass 2 names all four.
    first = " > ".join(f"[{shown[0].index(i) + 1}]" for i in (3, 2))
    second = " > ".join(f"[{shown[1].index(i) + 1}]" for i in (3, 0, 1, 2))
    scores: dict[int, float] = {}
    order, named = lw.aggregate([Completion(first), Completion(second)], shown, [], "window", Context(), scores) or (
        [],
        [],
    )
    # 3: 3+3, 2: 2+0, 0: 0.5+2, 1: 0.5+1 (the two left out of pass 1 share 1 + 0 points).
    assert order == [3, 0, 2, 1] and set(named) == {0, 1, 2, 3}
    assert scores == {3: 1.0, 0: pytest.approx(2.5 / 6), 2: pytest.approx(2 / 6), 1: pytest.approx(1.5 / 6)}


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3"])
def test_self_consistency_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="self_consistency"):
        Listwise(self_consistency=bad)  # type: ignore[arg-type]


def test_self_consistency_counts_calls_and_rounds() -> None:
    assert Listwise(window=20, step=10, self_consistency=3).calls(100) == 27
    assert Listwise(self_consistency=1).calls(100) == 9


# --- top-down partitioning -------------------------------------------------------------------------


def rounds(strategy: TopDown | Listwise, docs: list[str], grades: dict[str, float]) -> tuple[int, int, list[str]]:
    """Drive a plan by hand with a fair judge: (sequential steps, calls, the order)."""
    judge = BiasedJudge(lambda q, t: grades[t], bias=0.0)
    plan = strategy.plan(QUERY, [Document(i, t) for i, t in enumerate(docs)], Context(top_k=10))
    steps = calls = 0
    try:
        step = next(plan)
        while True:
            steps += 1
            calls += len(step)  # type: ignore[arg-type]
            step = plan.send([Completion(judge.answer(p)) for p in step])  # type: ignore[union-attr]
    except StopIteration as stop:
        return steps, calls, [docs[i] for i in stop.value.order]


def test_topdown_finds_the_top_10_of_100_in_fewer_calls_and_rounds() -> None:
    found = {"topdown": [0, 0, 0], "listwise": [0, 0, 0]}
    for seed in range(8):
        docs, grades = corpus(seed, 100, informative=True)
        best = set(sorted(docs, key=grades.__getitem__, reverse=True)[:10])
        for name, strategy in (("topdown", TopDown()), ("listwise", Listwise(window=20, step=10))):
            steps, calls, order = rounds(strategy, docs, grades)
            found[name][0] += steps
            found[name][1] += calls
            found[name][2] += len(best & set(order[:10]))
    assert found["listwise"] == [72, 72, 80]  # 9 sequential calls a query, every true top 10 found
    assert found["topdown"][2] == 80 and found["topdown"][0] <= 4 * 8  # 3 rounds, 4 when the candidates overflow
    assert found["topdown"][1] < found["listwise"][1]


def test_topdown_through_the_server_ranks_the_top_and_reports_cost(server: FakeLLMServer) -> None:
    docs, grades = corpus(3, 100, informative=True)
    server.responder = BiasedJudge(lambda q, t: grades[t], bias=0.0)
    result = Reranker("topdown", backend(server)).rerank(QUERY, docs, top_k=10)
    assert result.strategy == "topdown" and result.status == "reranked" and result.score_kind == "rank"
    assert result.documents == sorted(docs, key=grades.__getitem__, reverse=True)[:10]
    assert result.usage.calls == len(server.requests) < Listwise(window=20, step=10).calls(100)
    shown = [[t for _, t in read_prompt(r.user)[1]] for r in server.requests]
    assert shown[0] == docs[:20] and all(len(s) <= 20 for s in shown)
    pivot = shown[1][0]  # every group is shown with the pivot, first
    assert pivot in shown[0] and all(s[0] == pivot for s in shown[1:-1] if len(s) == 20)


def test_topdown_short_list_is_one_window_and_validates() -> None:
    backend_ = FakeBackend(respond=lambda p: "[2] > [1] > [3]")
    result = Reranker(TopDown(), backend_).rerank(QUERY, ["a", "b", "c"])
    assert result.indices == [1, 0, 2] and len(backend_.calls) == 1
    for bad in ({"top_k": 0}, {"top_k": 20}, {"window": 5, "top_k": 5}, {"top_k": True}):
        with pytest.raises(ConfigurationError, match="top_k"):
            TopDown(**bad)  # type: ignore[arg-type]


def test_topdown_failed_group_keeps_a_fallback_place() -> None:
    docs, grades = corpus(5, 45, informative=True)
    judge = BiasedJudge(lambda q, t: grades[t], bias=0.0)

    def answer(prompt: Prompt) -> str:
        shown = [t for _, t in read_prompt(prompt.user)[1]]
        if docs[25] in shown and len(shown) == 20:
            raise RuntimeError("group lost")
        return judge.answer(prompt)

    result = Reranker(TopDown(), FakeBackend(respond=answer), on_error="degrade_all").rerank(QUERY, docs)
    assert sorted(result.indices) == list(range(45)) and result.status == "partial"
    lost = {item.index for item in result if item.fallback}
    assert 25 in lost and lost <= set(range(20, 45))
    assert "call_failed" in result.degraded_reasons


def test_topdown_with_self_consistency_runs_each_window_k_times() -> None:
    docs, grades = corpus(2, 40, informative=True)
    judge = BiasedJudge(lambda q, t: grades[t], bias=0.0)
    backend_ = FakeBackend(respond=judge.answer)
    result = Reranker(TopDown(self_consistency=3), backend_).rerank(QUERY, docs, top_k=5)
    assert len(backend_.calls) % 3 == 0 and result.score_kind == "borda"
    assert result.documents == sorted(docs, key=grades.__getitem__, reverse=True)[:5]


def test_topdown_is_registered_for_the_cli_and_options() -> None:
    assert STRATEGIES["topdown"] is TopDown
    assert strategies_from(["topdown"]) == ["bm25", "topdown"]
    args = build_parser().parse_args(["eval", "--strategy", "topdown", "--window", "12", "--self-consistency", "3"])
    made = make_strategy_object("topdown", args)
    assert isinstance(made, TopDown) and made.window == 12 and made.self_consistency == 3
    listwise = make_strategy_object("listwise", build_parser().parse_args(["eval", "--self-consistency", "5"]))
    assert isinstance(listwise, Listwise) and listwise.self_consistency == 5


async def test_topdown_async_matches_sync() -> None:
    docs, grades = corpus(4, 50, informative=True)
    judge = BiasedJudge(lambda q, t: grades[t], bias=0.3, noise=0.2)
    sync = Reranker(TopDown(), FakeBackend(respond=judge.answer)).rerank(QUERY, docs)
    results = await asyncio.gather(
        *(Reranker(TopDown(), FakeBackend(respond=judge.answer)).arerank(QUERY, docs) for _ in range(2))
    )
    assert all(r.indices == sync.indices for r in results)


# --- both adapters ---------------------------------------------------------------------------------


def test_langchain_compressor_takes_the_new_strategies() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document as LCDocument

    from langchain_llmrerank import LLMRerankCompressor

    docs, grades = corpus(6, 45, informative=True)
    judge = BiasedJudge(lambda q, t: grades[t], bias=0.0)
    best = sorted(docs, key=grades.__getitem__, reverse=True)
    for strategy in ("topdown", TopDown(top_k=5), Listwise(self_consistency=3)):
        backend_ = FakeBackend(respond=judge.answer)
        compressor = LLMRerankCompressor(backend=backend_, strategy=strategy, top_n=5)
        out = compressor.compress_documents([LCDocument(page_content=d) for d in docs], QUERY)
        assert [d.page_content for d in out] == best[:5], strategy
        kind = out[0].metadata["rerank_score_kind"]
        assert kind == ("borda" if isinstance(strategy, Listwise) else "rank")


def test_llamaindex_postprocessor_takes_the_new_strategies() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from llamaindex_llmrerank import LLMRerankPostprocessor

    docs, grades = corpus(7, 45, informative=True)
    judge = BiasedJudge(lambda q, t: grades[t], bias=0.0)
    best = sorted(docs, key=grades.__getitem__, reverse=True)
    for strategy in ("topdown", Listwise(self_consistency=3)):
        post = LLMRerankPostprocessor(backend=FakeBackend(respond=judge.answer), strategy=strategy, top_n=5)
        nodes = [NodeWithScore(node=TextNode(text=d), score=1.0) for d in docs]
        out = post.postprocess_nodes(nodes, query_str=QUERY)
        assert [n.node.get_content() for n in out] == best[:5], strategy


def test_the_one_strategy_factory_takes_a_server_preset_as_the_cli_arguments() -> None:
    from llmrerank.serve.config import Preset

    listwise = make_strategy_object("listwise", Preset(window=6, step=2))
    assert isinstance(listwise, Listwise) and (listwise.window, listwise.step) == (6, 2)
    topdown = make_strategy_object("topdown", Preset(window=12, step=3))  # topdown has no step
    assert isinstance(topdown, TopDown) and topdown.window == 12
    assert make_strategy_object("listwise", Preset()) == Listwise()


def test_listwise_stride_is_step_and_the_default_step_is_half_the_window() -> None:
    assert Listwise(window=8).step == Listwise(window=8).stride == 4
    assert Listwise(window=8, step=3).stride == 3
    with pytest.raises(ConfigurationError, match="step <= window"):
        Listwise(window=4, step=5)
    with pytest.raises(ConfigurationError, match="step must be an int"):
        Listwise(window=4, step=0)
