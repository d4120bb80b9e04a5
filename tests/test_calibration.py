"""Calibrated probability of relevance (issue 23 item 3) and diversity after the rerank (item 4)."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from llmrerank import MMR, ConfigurationError, Dedup, Listwise, Pointwise, Reranker
from llmrerank.calibrate import read_run
from llmrerank.calibration import (
    Calibration,
    expected_calibration_error,
    fit_calibration,
    load_calibration,
    reliability,
    save_calibration,
)
from llmrerank.cli import main
from llmrerank.diversity import mmr_order, relevance
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.server import FakeLLMServer, overlap_responder

SLICE = Path(__file__).parent / "data" / "scifact-slice"
QUERY = "dogs bark at night"


def logistic_sample(n: int, seed: int = 0) -> tuple[list[float], list[bool]]:
    """Scores 0-10 whose true P(relevant) is 1 / (1 + exp(-(s - 6)))."""
    rng = random.Random(seed)
    scores = [rng.uniform(0, 10) for _ in range(n)]
    return scores, [rng.random() < 1 / (1 + math.exp(-(s - 6))) for s in scores]


# --- the fit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_fit_recovers_a_known_curve_and_lowers_the_error(method: str) -> None:
    scores, labels = logistic_sample(3000)
    fitted = fit_calibration(scores, labels, model="m", strategy="pointwise", score_kind="logprob", method=method)  # type: ignore[arg-type]
    for s in (2.0, 6.0, 8.0):
        assert fitted.probability(s) == pytest.approx(1 / (1 + math.exp(-(s - 6))), abs=0.08)
    naive = expected_calibration_error([s / 10 for s in scores], labels)
    after = expected_calibration_error([fitted.probability(s) for s in scores], labels)
    assert after < 0.03 < naive
    grid = [fitted.probability(s / 4) for s in range(-8, 50)]
    assert grid == sorted(grid) and all(0.0 <= p <= 1.0 for p in grid)  # monotone, in [0, 1]


def test_isotonic_is_the_pool_adjacent_violators_step() -> None:
    fitted = fit_calibration([1, 2, 3, 4, 4], [0, 1, 0, 1, 1], model="m", strategy="s", score_kind="k")
    # 2 and 3 violate the order and are pooled at 0.5; both 4s share one step.
    assert fitted.x == (1.0, 2.5, 4.0) and fitted.y == (0.0, 0.5, 1.0)
    assert fitted.probability(0) == 0.0 and fitted.probability(3.25) == pytest.approx(0.75)


def test_fit_needs_both_classes_and_matching_lengths() -> None:
    with pytest.raises(ConfigurationError, match="relevant and non-relevant"):
        fit_calibration([1, 2], [1, 1], model="m", strategy="s", score_kind="k")
    with pytest.raises(ConfigurationError, match="labels"):
        fit_calibration([1, 2], [1], model="m", strategy="s", score_kind="k")
    with pytest.raises(ConfigurationError, match="method"):
        fit_calibration([1, 2], [0, 1], model="m", strategy="s", score_kind="k", method="spline")  # type: ignore[arg-type]


def test_reliability_bins_and_ece() -> None:
    table = reliability([0.05, 0.15, 0.95, 0.95], [0, 1, 1, 0])
    assert table == [(0.05, 0.0, 1), (0.15, 1.0, 1), (0.95, 0.5, 2)]
    assert expected_calibration_error([0.05, 0.15, 0.95, 0.95], [0, 1, 1, 0]) == pytest.approx(
        (0.05 + 0.85 + 2 * 0.45) / 4
    )


def test_file_holds_one_map_per_model_and_strategy(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    first = fit_calibration([1, 9], [0, 1], model="gpt-x", strategy="pointwise", score_kind="relevance")
    second = fit_calibration(
        [1, 9], [0, 1], model="gpt-y", strategy="pointwise", score_kind="relevance", method="platt"
    )
    save_calibration(first, path)
    save_calibration(second, path)
    save_calibration(first, path)  # replaced, not duplicated
    data = json.loads(path.read_text())
    assert data["format"] == "llmrerank-calibration/1" and sorted(data["maps"]) == [
        "gpt-x::pointwise",
        "gpt-y::pointwise",
    ]
    assert load_calibration(path, "gpt-y", "pointwise") == second
    with pytest.raises(ConfigurationError, match="gpt-x::pointwise, gpt-y::pointwise"):
        load_calibration(path, "gpt-z", "pointwise")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="not an llmrerank calibration file"):
        load_calibration(tmp_path / "bad.json", "gpt-x", "pointwise")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_calibration(tmp_path / "missing.json", "gpt-x", "pointwise")


# --- through the Reranker, on the loopback server -------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    pytest.importorskip("openai")
    with FakeLLMServer(overlap_responder) as srv:
        yield srv


def openai_backend(server: FakeLLMServer) -> object:
    from llmrerank.backends.openai import OpenAIBackend

    return OpenAIBackend("fake-model", base_url=server.base_url, api_key="test")


DOCS = ["Dogs bark at night when they hear noises.", "Cats sleep all day.", "Dogs bark.", "Birds sing at dawn."]


def test_reranker_gives_probabilities_and_filters_on_them(server: FakeLLMServer, tmp_path: Path) -> None:
    fitted = fit_calibration(
        [0, 2, 3, 5, 7, 10], [0, 0, 0, 1, 1, 1], model="fake-model", strategy="pointwise", score_kind="relevance"
    )
    path = save_calibration(fitted, tmp_path / "cal.json")
    plain = Reranker(Pointwise(method="generate"), openai_backend(server)).rerank(QUERY, DOCS)
    calibrated = Reranker(Pointwise(method="generate"), openai_backend(server), calibration=path, min_probability=0.5)
    result = calibrated.rerank(QUERY, DOCS)
    assert result.score_kind == "probability"
    assert [i.index for i in plain][: len(result)] == result.indices  # the order is kept
    for item in [*result, *result.dropped]:
        raw = next(p.score for p in plain if p.index == item.index)
        assert raw is not None and item.score == pytest.approx(fitted.probability(raw))
        assert 0.0 <= item.score <= 1.0
    assert all(i.score is not None and i.score >= 0.5 for i in result)
    assert result.dropped and all(d.score is not None and d.score < 0.5 for d in result.dropped)


def test_calibration_of_another_kind_is_skipped_and_said(server: FakeLLMServer) -> None:
    fitted = fit_calibration([0, 10], [0, 1], model="fake-model", strategy="listwise", score_kind="first_token")
    result = Reranker(Listwise(), openai_backend(server), calibration=fitted).rerank(QUERY, DOCS)
    assert result.score_kind == "rank" and "calibration_skipped" in {d.code for d in result.diagnostics}


def test_a_skipped_calibration_is_logged_as_a_warning(server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    """Scores left unmapped make min_probability filter nothing: the log says so, not only the result."""
    fitted = fit_calibration([0, 10], [0, 1], model="fake-model", strategy="listwise", score_kind="first_token")
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        Reranker(Listwise(), openai_backend(server), calibration=fitted).rerank(QUERY, DOCS)
    assert any("calibration skipped" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_calibration_settings_are_checked(server: FakeLLMServer, tmp_path: Path) -> None:
    fitted = fit_calibration([0, 10], [0, 1], model="fake-model", strategy="pointwise", score_kind="relevance")
    backend = openai_backend(server)
    with pytest.raises(ConfigurationError, match="needs calibration"):
        Reranker("pointwise", backend, min_probability=0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="min_probability must be"):
        Reranker("pointwise", backend, calibration=fitted, min_probability=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="fusion=None"):
        Reranker("pointwise", backend, calibration=fitted, fusion="rrf")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="no calibration for model 'fake-model' and strategy 'listwise'"):
        Reranker("listwise", backend, calibration=fitted)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="min_probability, not min_score"):
        Reranker("pointwise", backend, calibration=fitted, min_score=5)  # type: ignore[arg-type]


def test_cli_calibrate_fits_on_the_tuning_half_and_the_reranker_reads_it(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("bm25s")
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    out = tmp_path / "cal.json"
    args = ["calibrate", "--data", str(SLICE), "--strategy", "pointwise", "--backend", "openai"]
    args += ["--base-url", server.base_url, "--model", "fake-model", "--depth", "10", "--out", str(out)]
    assert main([*args, "--method", "platt"]) == 0
    printed = capsys.readouterr().out
    assert "platt map for fake-model::pointwise (logprob scores)" in printed and "of 10 queries" in printed
    saved = json.loads(out.read_text())["maps"]["fake-model::pointwise"]
    assert saved["fitted_on"]["half"] == "tuning" and saved["fitted_on"]["queries"] == 10
    asked = {r.user.split("Query: ")[1].split("\n")[0] for r in server.requests}
    tuning = {json.loads(line)["text"] for line in (SLICE / "queries.jsonl").read_text().splitlines()}
    assert asked and asked <= tuning
    reranker = Reranker("pointwise", openai_backend(server), calibration=out)  # type: ignore[arg-type]
    assert reranker.rerank(QUERY, DOCS).score_kind == "probability"


def test_read_run_takes_trec_and_tsv(tmp_path: Path) -> None:
    trec = tmp_path / "run.trec"
    trec.write_text("q1 Q0 d2 2 1.0 bm25\nq1 Q0 d1 1 2.0 bm25\nq2 Q0 d3 1 1.0 bm25\n")
    assert read_run(trec) == {"q1": ["d1", "d2"], "q2": ["d3"]}
    tsv = tmp_path / "run.tsv"
    tsv.write_text("query-id\tcorpus-id\trank\tscore\nq1\td9\t1\t3.5\n")
    assert read_run(tsv) == {"q1": ["d9"]}
    (tmp_path / "bad").write_text("q1 d1\n")
    with pytest.raises(ConfigurationError, match="columns"):
        read_run(tmp_path / "bad")


# --- diversity and duplicates ---------------------------------------------------------------------


class TopicEmbedder:
    """Embeds a text by the topic word it contains: the same topic, the same direction."""

    TOPICS = ("dogs", "cats", "birds")

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        return [[1.0 if topic in t.lower() else 0.0 for topic in self.TOPICS] + [0.1] for t in texts]


TOPICAL = [
    "Dogs bark at night; dogs bark loudly.",
    "Dogs bark at night, say dog owners.",
    "Cats bark rarely at night.",
    "Birds at night are quiet.",
]


def test_mmr_spreads_the_topics_and_keeps_every_document(server: FakeLLMServer) -> None:
    plain = Reranker(Pointwise(method="generate"), openai_backend(server)).rerank(QUERY, TOPICAL)
    assert plain.indices[:2] == [0, 1]  # the two dog passages lead
    diverse = Reranker(
        Pointwise(method="generate"), openai_backend(server), diversity=MMR(lambda_=0.5, embedder=TopicEmbedder())
    ).rerank(QUERY, TOPICAL)
    assert diverse.indices[0] == 0 and diverse.indices[1] != 1 and sorted(diverse.indices) == [0, 1, 2, 3]
    assert {i.index: i.score for i in diverse} == {i.index: i.score for i in plain}  # scores stay the reranker's
    assert "diversified" in {d.code for d in diverse.diagnostics}
    same = Reranker(
        Pointwise(method="generate"), openai_backend(server), diversity=MMR(lambda_=1.0, embedder=TopicEmbedder())
    ).rerank(QUERY, TOPICAL)
    assert same.indices == plain.indices


def test_dedup_drops_near_duplicates_with_a_reason(server: FakeLLMServer) -> None:
    embedder = TopicEmbedder()
    result = Reranker(Listwise(), openai_backend(server), dedup=Dedup(0.95, embedder=embedder)).rerank(
        QUERY, TOPICAL, top_k=3
    )
    assert result.indices == [0, 2, 3] and [d.index for d in result.dropped] == [1]
    (note,) = result.dropped[0].diagnostics
    assert note.code == "duplicate" and note.message == "cosine 1.000 with document 0" and note.index == 1
    assert embedder.calls == 1


def test_mmr_embedder_serves_dedup_too_and_failures_keep_the_order(server: FakeLLMServer) -> None:
    embedder = TopicEmbedder()
    result = Reranker(Listwise(), openai_backend(server), diversity=MMR(embedder=embedder), dedup=0.99).rerank(
        QUERY, TOPICAL
    )
    assert embedder.calls == 1 and [d.index for d in result.dropped] == [1]

    class Broken:
        def encode(self, texts: Sequence[str]) -> list[list[float]]:
            return [[1.0]]  # one vector for several texts

    kept = Reranker(Listwise(), openai_backend(server), diversity=MMR(embedder=Broken())).rerank(QUERY, TOPICAL)
    plain = Reranker(Listwise(), openai_backend(server)).rerank(QUERY, TOPICAL)
    assert kept.indices == plain.indices and "diversity_failed" in {d.code for d in kept.diagnostics}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"diversity": MMR}, "diversity must be"),
        ({"dedup": "0.9"}, "dedup must be"),
        ({"dedup": 0}, "threshold"),
    ],
)
def test_diversity_settings_are_checked(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Reranker("listwise", FakeBackend(respond=overlap_judge), **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lambda_"):
        MMR(lambda_=1.5)
    with pytest.raises(ConfigurationError, match="encode"):
        MMR(embedder=object())


def test_mmr_order_and_relevance_scaling() -> None:
    vectors = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    assert mmr_order([1.0, 0.9, 0.5], vectors, 0.5) == [0, 2, 1]
    assert mmr_order([1.0, 0.9, 0.5], vectors, 1.0) == [0, 1, 2]
    assert relevance([None, None], False) == [1.0, 0.5]
    assert relevance([4.0, 2.0, None], False) == [1.0, 0.0, 0.0]
    assert relevance([0.8, 0.3], True) == [0.8, 0.3]


def test_both_adapters_take_calibration_and_diversity(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.documents import Document as LCDocument
    from llama_index.core.schema import NodeWithScore, TextNode

    from langchain_llmrerank import LLMRerankCompressor
    from llamaindex_llmrerank import LLMRerankPostprocessor

    fitted = fit_calibration(
        [0, 3, 6, 10], [0, 0, 1, 1], model="fake-model", strategy="pointwise", score_kind="relevance"
    )
    path = save_calibration(fitted, tmp_path / "cal.json")
    options = {
        "strategy": Pointwise(method="generate"),
        "calibration": str(path),
        "min_probability": 0.5,
        "dedup": Dedup(0.95, embedder=TopicEmbedder()),
        "diversity": MMR(embedder=TopicEmbedder()),
        "top_n": None,
    }
    compressor = LLMRerankCompressor(backend=FakeBackend(respond=overlap_judge), **options)  # type: ignore[arg-type]
    docs = compressor.compress_documents([LCDocument(page_content=t) for t in TOPICAL], QUERY)
    assert docs and all(d.metadata["rerank_score_kind"] == "probability" for d in docs)
    assert all(d.metadata["relevance_score"] >= 0.5 for d in docs)
    assert TOPICAL[1] not in [d.page_content for d in docs]  # the duplicate of the first
    post = LLMRerankPostprocessor(backend=FakeBackend(respond=overlap_judge), **options)  # type: ignore[arg-type]
    nodes = post.postprocess_nodes([NodeWithScore(node=TextNode(text=t), score=1.0) for t in TOPICAL], query_str=QUERY)
    assert [n.node.get_content() for n in nodes] == [d.page_content for d in docs]
    with pytest.raises(ValueError, match="min_probability needs calibration"):  # pydantic's, with our message
        LLMRerankCompressor(backend=FakeBackend(respond=overlap_judge), min_probability=0.5)
    assert isinstance(load_calibration(path, "fake-model", "pointwise"), Calibration)


def test_cli_eval_takes_calibration_and_diversity(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("ir_measures")
    from llmrerank.cli import after_rerank, build_parser

    parsed = build_parser().parse_args(["eval", "--calibration", "c.json", "--min-probability", "0.4", "--mmr", "0.6"])
    options = after_rerank(parsed)
    assert options["calibration"] == "c.json" and options["min_probability"] == 0.4
    assert options["diversity"] == MMR(lambda_=0.6) and "dedup" not in options
    fitted = fit_calibration(
        [0, 3, 6, 10], [0, 0, 1, 1], model="fake-model", strategy="pointwise", score_kind="logprob"
    )
    path = save_calibration(fitted, tmp_path / "cal.json")
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    args = [
        "eval",
        "--data",
        str(SLICE),
        "--strategy",
        "pointwise",
        "--backend",
        "openai",
        "--base-url",
        server.base_url,
    ]
    args += ["--model", "fake-model", "--queries", "2", "--depth", "5", "--no-progress", "--calibration", str(path)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["queries"] == 2 and "pointwise" in capsys.readouterr().out
