"""Fusion of the LLM's score with the first-stage score: the pure functions and the Reranker option."""

from __future__ import annotations

import logging
import math
import sys
from types import SimpleNamespace

import pytest

from llmrerank import ConfigurationError, Fusion, InvalidInputError, Listwise, Pointwise, QueryLikelihood, Reranker
from llmrerank.fusion import check_scores, first_stage_score, first_stage_scores, fuse, llm_values, make_fusion
from llmrerank.protocol import Ranking
from llmrerank.testing import FakeBackend, overlap_judge, overlap_likelihood

QUERY = "why do dogs bark at night"
TEXTS = [
    "Dogs bark at night when they hear noises.",  # the judge's favourite
    "Dogs bark.",
    "A bird sings in the morning.",
]


def ranking(scores: dict[int, float]) -> Ranking:
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return Ranking(order, "likelihood", dict(scores))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "sum"}, "method"),
        ({"weight": 1.5}, "weight"),
        ({"weight": True}, "weight"),
        ({"keys": ()}, "keys"),
        ({"rrf_k": 0}, "rrf_k"),
    ],
)
def test_bad_fusion_settings_raise(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Fusion(**options)  # type: ignore[arg-type]


def test_fusion_by_name_and_single_key() -> None:
    assert make_fusion("RRF") == Fusion("rrf")
    assert make_fusion(None) is None
    assert Fusion(keys="bm25").keys == ("bm25",)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        make_fusion(3)  # type: ignore[arg-type]


def test_first_stage_scores_are_found_where_the_frameworks_keep_them() -> None:
    langchain_like = SimpleNamespace(page_content="x", metadata={"relevance_score": 0.7})
    node_like = SimpleNamespace(text="x", score=2.5, metadata={"score": 9.0})
    docs = [
        {"content": "x", "score": 3},
        {"content": "x", "metadata": {"score": 1.5}},
        langchain_like,
        node_like,  # the attribute wins over the metadata
        "plain text",
        {"content": "x", "score": float("nan")},
        {"content": "x", "score": True},
        SimpleNamespace(text="x", score=None),
    ]
    assert first_stage_scores(docs) == [3.0, 1.5, 0.7, 2.5, None, None, None, None]
    assert first_stage_score({"content": "x", "bm25": 4, "score": 1}, keys=("bm25",)) == 4.0


def test_explicit_scores_are_checked() -> None:
    assert check_scores([1, None, float("inf")], 3) == [1.0, None, None]
    with pytest.raises(InvalidInputError, match="2 values for 3"):
        check_scores([1, 2], 3)
    with pytest.raises(InvalidInputError, match=r"\[1\] is str"):
        check_scores([1, "2", 3], 3)
    with pytest.raises(InvalidInputError, match="list of numbers"):
        check_scores("123", 3)


def test_zscore_fusion_weighs_both_sides() -> None:
    llm = ranking({0: 3.0, 1: 2.0, 2: 1.0})
    retriever = [1.0, 2.0, 30.0]
    assert fuse(llm, retriever, Fusion("zscore", weight=1.0)).order == [0, 1, 2]
    assert fuse(llm, retriever, Fusion("zscore", weight=0.0)).order == [2, 1, 0]
    fused = fuse(llm, retriever, Fusion("zscore", weight=0.5))
    z_llm = [1.224745, 0.0, -1.224745]
    mean, std = 11.0, math.sqrt(((10**2) + (9**2) + (19**2)) / 3)
    expected = [0.5 * a + 0.5 * (b - mean) / std for a, b in zip(z_llm, retriever, strict=True)]
    assert fused.scores == pytest.approx(dict(enumerate(expected)), abs=1e-5)
    assert fused.order == sorted(range(3), key=lambda i: -expected[i])
    assert fused.score_kind == "fused" and fused.diagnostics[-1].code == "fused"


def test_minmax_and_rrf() -> None:
    llm = ranking({0: 10.0, 1: 5.0, 2: 0.0})
    minmax = fuse(llm, [0.0, 1.0, 4.0], Fusion("minmax", weight=0.5))
    assert minmax.scores == pytest.approx({0: 0.5, 1: 0.375, 2: 0.5})
    assert minmax.order == [0, 2, 1]  # the tie keeps the LLM's order
    rrf = fuse(llm, [0.0, 1.0, 4.0], Fusion("rrf", weight=0.5, rrf_k=1))
    assert rrf.scores == pytest.approx({0: 0.5 / 2 + 0.5 / 4, 1: 0.5 / 3 + 0.5 / 3, 2: 0.5 / 4 + 0.5 / 2})
    assert rrf.order == [0, 2, 1]


def test_missing_first_stage_scores_count_as_lowest_and_are_reported() -> None:
    llm = ranking({0: 1.0, 1: 1.0, 2: 1.0})
    fused = fuse(llm, [5.0, None, 3.0], Fusion("zscore", weight=0.5))
    assert fused.order == [0, 1, 2]  # None counts as 3.0, tied with document 2; ties keep the LLM order
    assert [(d.code, d.index) for d in fused.diagnostics if d.code == "first_stage_missing"] == [
        ("first_stage_missing", 1)
    ]
    with pytest.raises(InvalidInputError):
        fuse(llm, [1.0], Fusion())


def test_without_any_first_stage_score_the_input_order_is_fused_as_reciprocal_ranks() -> None:
    llm = Ranking([2, 1, 0], "likelihood", {0: -9.0, 1: -5.0, 2: -4.9})  # the LLM barely prefers 2 to 1
    fused = fuse(llm, [None, None, None], Fusion("minmax", weight=0.5))
    assert fused.score_kind == "fused" and all(0 <= v <= 1 for v in fused.scores.values())
    assert fused.order == [1, 2, 0]  # retriever rank 2 beats rank 3 where the LLM hardly tells them apart
    expected = fuse(llm, [1 / 61, 1 / 62, 1 / 63], Fusion("minmax", weight=0.5))
    assert fused.scores == pytest.approx(expected.scores)
    (note,) = [d.message for d in fused.diagnostics if d.code == "fused"]
    assert "input order" in note and "reciprocal rank 1/(60 + rank)" in note
    assert "fusion_skipped" not in {d.code for d in fused.diagnostics}
    by_rank = fuse(llm, [None, None, None], Fusion("rrf", weight=0.5, rrf_k=1))
    assert by_rank.scores[1] == pytest.approx(0.5 / 3 + 0.5 / 3)  # LLM rank 2, input rank 2


def test_rankings_without_scores_take_part_with_their_order() -> None:
    listwise = Ranking([2, 0, 1], "rank", {})
    assert llm_values(listwise, [0, 1, 2]) == [2.0, 1.0, 3.0]
    partial = Ranking([1, 0, 2], "relevance", {1: 8.0, 0: 2.0})  # document 2 not scored (beyond a hybrid's keep)
    assert llm_values(partial, [0, 1, 2]) == [2.0, 8.0, 2.0]


def test_documents_the_llm_could_not_judge_keep_their_fallback_place_without_a_score() -> None:
    failed = Ranking([0, 2, 1, 3], "likelihood", {0: -1.0, 2: -5.0}, unjudged={1, 3})
    fused = fuse(failed, [1.0, 50.0, 9.0, 40.0], Fusion("minmax", weight=0.4))
    assert fused.order == [2, 0, 1, 3] and set(fused.scores) == {0, 2} and fused.unjudged == {1, 3}
    nothing = fuse(Ranking([0, 1], "input_order", unjudged={0, 1}), [1.0, 2.0], Fusion())
    assert nothing.order == [0, 1] and nothing.diagnostics[-1].code == "fusion_skipped"


def test_reranker_fuses_scores_read_from_the_documents() -> None:
    docs = [{"content": t, "score": s} for t, s in zip(TEXTS, [1.0, 2.0, 30.0], strict=True)]
    backend = FakeBackend(respond=overlap_judge)
    plain = Reranker(Pointwise(method="generate"), backend).rerank(QUERY, docs)
    assert plain.indices[0] == 0 and plain.score_kind == "relevance"
    retriever_heavy = Reranker(Pointwise(method="generate"), backend, fusion=Fusion("zscore", weight=0.2))
    fused = retriever_heavy.rerank(QUERY, docs, top_k=2)
    assert fused.score_kind == "fused" and fused.indices == [2, 0]
    assert fused.documents == [docs[2], docs[0]]
    assert "fused" in {d.code for d in fused.diagnostics}
    explicit = retriever_heavy.rerank(QUERY, TEXTS, first_stage_scores=[30.0, 2.0, 1.0])
    assert explicit.indices[0] == 0


def test_listwise_can_be_fused_by_rank() -> None:
    docs = [{"content": t, "score": s} for t, s in zip(TEXTS, [0.0, 0.1, 50.0], strict=True)]
    result = Reranker(Listwise(), FakeBackend(respond=overlap_judge), fusion="rrf").rerank(QUERY, docs)
    assert result.score_kind == "fused" and sorted(result.indices) == [0, 1, 2]


def test_first_stage_scores_without_fusion_or_of_the_wrong_shape_raise() -> None:
    reranker = Reranker(Pointwise(method="generate"), FakeBackend(respond=overlap_judge))
    assert reranker.fusion is None and reranker.first_stage_scores(TEXTS) is None
    with pytest.raises(ConfigurationError, match="need fusion"):
        reranker.rerank(QUERY, TEXTS, first_stage_scores=[1, 2, 3])
    fusing = Reranker(Pointwise(method="generate"), FakeBackend(respond=overlap_judge), fusion="zscore")
    with pytest.raises(InvalidInputError):
        fusing.rerank(QUERY, TEXTS, first_stage_scores=[1, 2])


def test_documents_without_scores_are_visible(caplog: pytest.LogCaptureFixture) -> None:
    reranker = Reranker(Pointwise(method="generate"), FakeBackend(respond=overlap_judge), fusion="zscore")
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = reranker.rerank(QUERY, [{"content": TEXTS[0], "score": 1.0}, TEXTS[1], TEXTS[2]])
    assert result.score_kind == "fused"
    assert {d.index for d in result.diagnostics if d.code == "first_stage_missing"} == {1, 2}
    assert "2 of 3 documents have no first-stage score" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llmrerank"):
        result = reranker.rerank(QUERY, TEXTS)
    assert result.score_kind == "fused" and "fusion_skipped" not in {d.code for d in result.diagnostics}
    assert any("input order" in d.message for d in result.diagnostics if d.code == "fused")
    assert "fusion skipped" not in caplog.text


def test_auto_fusion_follows_the_backends_preference_for_its_preferred_strategy() -> None:
    backend = FakeBackend(likelihood=overlap_likelihood, preferred_strategy="query_likelihood")
    backend.preferred_fusion = Fusion("zscore", weight=0.3)
    assert Reranker(backend=backend).fusion == Fusion("zscore", weight=0.3)
    assert Reranker(QueryLikelihood(normalization="sum"), backend).fusion == Fusion("zscore", weight=0.3)
    assert Reranker("pointwise", backend).fusion is None  # tuned for the preferred strategy only
    assert Reranker(backend=backend, fusion=None).fusion is None
    assert Reranker("pointwise", backend, fusion="minmax").fusion == Fusion("minmax")
    result = Reranker(backend=backend).rerank(QUERY, TEXTS)  # strings: fused with their order
    assert result.score_kind == "fused" and "fusion_skipped" not in {d.code for d in result.diagnostics}


async def test_async_rerank_takes_explicit_scores() -> None:
    backend = FakeBackend(likelihood=overlap_likelihood)
    reranker = Reranker(QueryLikelihood(), backend, fusion=Fusion("zscore", weight=0.1))
    result = await reranker.arerank(QUERY, TEXTS, first_stage_scores=[0.0, 0.0, 100.0])
    assert result.indices[0] == 2 and result.score_kind == "fused"


def test_a_rerank_nobody_judged_logs_one_warning_not_a_fusion_one_too(caplog: pytest.LogCaptureFixture) -> None:
    from llmrerank.errors import BackendError

    def down(prompt: object) -> str:
        raise BackendError("server down", status_code=503)

    reranker = Reranker(Pointwise(method="generate"), FakeBackend(respond=down), fusion="zscore")
    docs = [{"content": t, "score": float(i)} for i, t in enumerate(TEXTS)]
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = reranker.rerank(QUERY, docs)
    assert result.status == "fallback" and "fusion_skipped" in {d.code for d in result.diagnostics}
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "rerank degraded (call_failed)" in warning


@pytest.mark.parametrize("method", ["zscore", "minmax", "rrf"])
@pytest.mark.parametrize(
    "first_stage",
    [
        [1e200, -1e200, 1.0],
        [sys.float_info.max, -sys.float_info.max, 0.0],
        [sys.float_info.max, sys.float_info.max, -sys.float_info.max],
        [5e-324, -5e-324, 0.0],
    ],
)
def test_extreme_first_stage_scores_fuse_to_finite_scores(method: str, first_stage: list[float]) -> None:
    docs = [{"content": t, "score": s} for t, s in zip(TEXTS, first_stage, strict=True)]
    backend = FakeBackend(respond=overlap_judge)
    result = Reranker(Pointwise(method="generate"), backend, fusion=Fusion(method, weight=0.3)).rerank(QUERY, docs)
    assert result.score_kind == "fused" and result.status == "reranked"
    assert all(d.score is not None and math.isfinite(d.score) for d in result)
    retriever_only = fuse(ranking({0: 1.0, 1: 1.0, 2: 1.0}), first_stage, Fusion(method, weight=0.0))
    best = max(range(3), key=lambda i: (first_stage[i], -i))
    assert retriever_only.order[0] == best  # the retriever's order survives the scaling


def test_a_first_stage_score_beyond_float_range_counts_as_missing() -> None:
    assert first_stage_score({"text": "a", "score": 10**400}) is None
    assert first_stage_score(SimpleNamespace(page_content="a", metadata={"relevance_score": -(10**400)})) is None
    assert check_scores([10**400, 2, None], 3) == [None, 2.0, None]
    langchain_like = [
        SimpleNamespace(page_content=t, metadata={"score": s}) for t, s in zip(TEXTS, [10**400, 2, 1], strict=True)
    ]
    backend = FakeBackend(respond=overlap_judge)
    result = Reranker(Pointwise(method="generate"), backend, fusion="minmax").rerank(QUERY, langchain_like)
    assert result.score_kind == "fused" and all(d.score is not None and math.isfinite(d.score) for d in result)
    assert [d.index for d in result.diagnostics if d.code == "first_stage_missing"] == [0]
    explicit = Reranker(Pointwise(method="generate"), backend, fusion="zscore")
    calls = len(backend.calls)
    fused = explicit.rerank(QUERY, TEXTS, first_stage_scores=[1, 10**400, 3])
    assert len(backend.calls) == calls + 3 and math.isfinite(fused[0].score or 0.0)
    assert [d.index for d in fused.diagnostics if d.code == "first_stage_missing"] == [1]
