"""Evaluation, pricing and the ``llmrerank eval`` command, on a slice of the real SciFact collection."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmrerank import ConfigurationError, Listwise, Pointwise, Reranker, Usage
from llmrerank.evaluation import (
    Collection,
    default_data_or_slice,
    default_data_path,
    evaluate,
    evaluate_reranking,
    load_beir,
    percentile,
    score_rankings,
    split_halves,
)
from llmrerank.pricing import PRICES_AS_OF, estimate_cost, load_prices, price_of
from llmrerank.protocol import Prompt
from llmrerank.testing import FakeBackend

pytest.importorskip("bm25s")
pytest.importorskip("ir_measures")

DEPTH = 10
BLOCK = re.compile(r'<document id="([^"]*)">\n(.*?)\n</document>', re.DOTALL)


SLICE = Path(__file__).parent / "data" / "scifact-slice"


def collection_path() -> Path:
    """The full SciFact collection where it is given, else the slice committed with the tests."""
    try:
        return default_data_path()
    except ConfigurationError:
        return SLICE


@pytest.fixture(scope="module")
def scifact() -> Collection:
    return load_beir(collection_path())


@pytest.fixture(scope="module")
def answerable(scifact: Collection) -> list[str]:
    """Five queries whose relevant documents all sit in the BM25 top DEPTH."""
    ids = list(scifact.queries)[:60]
    hits = scifact.bm25().search([scifact.queries[q] for q in ids], DEPTH)
    found = [q for q, h in zip(ids, hits, strict=True) if set(scifact.qrels[q]) <= {d for d, _ in h}]
    assert len(found) >= 5
    return found[:5]


def oracle(collection: Collection, *, reverse: bool = False) -> FakeBackend:
    """A fake LLM that knows the qrels: relevant documents first (or the prompt's order reversed)."""
    by_query = {
        text: [collection.documents[d][:60] for d in collection.qrels[qid]] for qid, text in collection.queries.items()
    }

    def respond(prompt: Prompt) -> str:
        query = re.search(r"^Query: (.*)$", prompt.user, re.MULTILINE)
        assert query is not None
        relevant = by_query[query.group(1)]
        blocks = [(label, any(text.startswith(r) for r in relevant)) for label, text in BLOCK.findall(prompt.user)]
        if len(blocks) == 1:
            return "10" if blocks[0][1] else "0"
        if reverse:
            return " > ".join(label for label, _ in reversed(blocks))
        ranked = [label for label, hit in blocks if hit] + [label for label, hit in blocks if not hit]
        return " > ".join(ranked)

    return FakeBackend(respond=respond)


def test_a_data_variable_naming_no_folder_is_said_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMRERANK_DATA", str(tmp_path / "missing"))
    for find in (default_data_path, load_beir):
        with pytest.raises(ConfigurationError, match=r"LLMRERANK_DATA .*missing.* no such folder"):
            find()
    path, note = default_data_or_slice()  # the checkout's slice, saying why
    assert path.resolve() == SLICE.resolve() and note is not None and "LLMRERANK_DATA" in note


def test_default_collection_is_found_and_overridable(tmp_path, monkeypatch) -> None:
    import shutil

    shutil.copytree(SLICE, tmp_path / "shared" / "data" / "scifact")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("LLMRERANK_DATA", raising=False)
    assert default_data_path() == tmp_path / "shared" / "data" / "scifact"
    found = load_beir()
    assert len(found.queries) == 20 and len(found.documents) == 288
    assert sum(len(judged) for judged in found.qrels.values()) >= 20
    monkeypatch.setenv("LLMRERANK_DATA", str(tmp_path))
    assert default_data_path() == tmp_path
    with pytest.raises(ConfigurationError, match="not a BEIR folder"):
        load_beir()


@pytest.mark.parametrize("strategy", [Listwise(window=DEPTH), Pointwise()])
def test_oracle_reranker_is_perfect_where_the_depth_allows(scifact, answerable, strategy) -> None:
    baseline = evaluate(scifact, depth=DEPTH, queries=answerable)
    report = evaluate(scifact, Reranker(strategy, oracle(scifact)), depth=DEPTH, queries=answerable)
    assert report.metrics["nDCG@10"] == pytest.approx(1.0)
    assert report.metrics["P@1"] == report.metrics["RR@10"] == pytest.approx(1.0)
    assert report.metrics["nDCG@10"] >= baseline.metrics["nDCG@10"]
    assert report.metrics["R@10"] == baseline.metrics["R@10"] == pytest.approx(1.0)
    calls = 1 if isinstance(strategy, Listwise) else DEPTH
    assert report.usage.calls == calls * len(answerable)
    assert report.usage.prompt_tokens > 0 and report.cost == 0.0
    assert [q.query_id for q in report.per_query] == answerable
    assert all(len(q.ranking) == DEPTH for q in report.per_query)
    assert 0 < report.latency_p50 <= report.latency_p95


def test_reversed_reranker_scores_below_bm25(scifact) -> None:
    bm25 = evaluate(scifact, depth=DEPTH, queries=5)
    report = evaluate(scifact, Reranker(Listwise(window=DEPTH), oracle(scifact, reverse=True)), depth=DEPTH, queries=5)
    assert report.queries == 5 and report.name == "listwise"
    assert report.metrics["nDCG@10"] < bm25.metrics["nDCG@10"]
    assert report.metrics["nDCG@3"] < bm25.metrics["nDCG@3"]
    assert [q.ranking for q in report.per_query] == [tuple(reversed(q.ranking)) for q in bm25.per_query]


def test_function_rerankers_sync_and_async(scifact) -> None:
    async def reverse(query: str, texts: list[str]) -> list[int]:
        return list(range(len(texts)))[::-1]

    bm25 = evaluate(scifact, depth=DEPTH, queries=3)
    sync = evaluate(scifact, lambda q, texts: [len(texts) - 1 - i for i in range(len(texts))], depth=DEPTH, queries=3)
    both = evaluate(scifact, reverse, depth=DEPTH, queries=3, concurrency=3, model="gpt-4o-mini")
    assert [q.ranking for q in sync.per_query] == [q.ranking for q in both.per_query]
    assert sync.per_query[0].ranking == tuple(reversed(bm25.per_query[0].ranking))
    assert both.name == "reverse" and both.cost == 0.0  # no tokens reported, no cost
    partial = evaluate(scifact, lambda q, texts: [3], depth=DEPTH, queries=1)
    head = bm25.per_query[0].ranking
    assert partial.per_query[0].ranking == (head[3], *head[:3], *head[4:])
    with pytest.raises(Exception, match="position"):
        evaluate(scifact, lambda q, texts: [99], depth=DEPTH, queries=1)


def test_metrics_match_a_hand_computation() -> None:
    queries = [
        {"id": "q1", "query": "first", "documents": [{"id": i, "text": i} for i in "abcd"]},
        {"id": "q2", "query": "second", "documents": [{"id": i, "text": i} for i in "xyz"]},
        {"id": "q3", "query": "third", "documents": []},
    ]
    truth = {"q1": ["b"], "q2": {"x": 2, "z": 1}, "q3": {"nothing": 1}}
    report = evaluate_reranking(queries, truth, None, k=2)
    per = {q.query_id: q.metrics for q in report.per_query}
    # q1: the one relevant document at rank 2.
    assert per["q1"] == pytest.approx(
        {"nDCG@3": 1 / math.log2(3), "nDCG@10": 1 / math.log2(3), "RR@10": 0.5, "RR": 0.5, "P@1": 0.0, "R@2": 1.0}
    )
    # q2: grades 2, 0, 1 against the ideal 2, 1 (trec_eval's linear gain).
    ndcg = (2 + 1 / math.log2(4)) / (2 + 1 / math.log2(3))
    assert per["q2"] == pytest.approx(
        {"nDCG@3": ndcg, "nDCG@10": ndcg, "RR@10": 1.0, "RR": 1.0, "P@1": 1.0, "R@2": 0.5}
    )
    # q3: nothing retrieved still counts, as zeros.
    assert per["q3"] == dict.fromkeys(per["q3"], 0.0)
    assert report.metrics["RR@10"] == pytest.approx(1.5 / 3)
    assert report.metrics["nDCG@3"] == pytest.approx((1 / math.log2(3) + ndcg) / 3)
    assert report.name == "input" and report.depth == 4


def test_seed_shape_with_a_reranker_and_aligned_ground_truth() -> None:
    queries = [
        {"query": "why do dogs bark", "documents": ["Cats purr.", "Dogs bark at night.", "Birds sing."]},
        {"text": "where do birds sing", "documents": ["Birds sing in the morning.", "Cats purr."]},
    ]
    truth = [[1], {"0": 1}]
    backend = FakeBackend(["[2] > [1] > [3]", "[2] > [1]"])
    report = evaluate_reranking(queries, truth, Reranker("listwise", backend))
    assert [q.ranking for q in report.per_query] == [("1", "0", "2"), ("1", "0")]
    assert [q.metrics["P@1"] for q in report.per_query] == [1.0, 0.0]
    assert report.usage.calls == 2 and report.calls_per_query == 1.0
    assert report.backend == "fake" and report.cost == 0.0
    with pytest.raises(Exception, match="2 queries"):
        evaluate_reranking(queries, [[1]], None)


def test_score_rankings_ignores_order_ties() -> None:
    # trec_eval sorts equal scores by document id; our scores must keep the given order.
    out = score_rankings({"q": ["z", "a"]}, {"q": {"z": 1}}, k=1)
    assert out["q"]["P@1"] == 1.0 and out["q"]["R@1"] == 1.0


def test_percentile() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)


def test_pricing(tmp_path) -> None:
    usage = Usage(calls=1, prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert estimate_cost("gpt-4o-mini", usage) == pytest.approx(0.75)
    assert estimate_cost("gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.75)
    assert price_of("gpt-4o") != price_of("gpt-4o-mini")
    assert price_of("claude-haiku-4-5-20251001") == price_of("claude-haiku-4-5")
    assert estimate_cost("my-model", usage) is None
    assert estimate_cost("my-model", usage, {"my-model": {"input": 1, "output": 2}}) == pytest.approx(3.0)
    assert estimate_cost("anything", usage, backend="local") == 0.0
    file = tmp_path / "prices.json"
    file.write_text(json.dumps({"gpt-4o-mini": [1, 1]}))
    assert estimate_cost("gpt-4o-mini", usage, file) == pytest.approx(2.0)
    assert load_prices()["gpt-4o-mini"].input == 0.15
    with pytest.raises(ConfigurationError, match="bad price"):
        load_prices({"x": "free"})
    assert re.fullmatch(r"\d{4}-\d{2}", PRICES_AS_OF)


def write_slice(collection: Collection, query_ids: list[str], root: Path) -> Path:
    """A small BEIR folder: the queries, their BM25 top 30 and their judged documents."""
    hits = collection.bm25().search([collection.queries[q] for q in query_ids], 30)
    keep = {d for h in hits for d, _ in h} | {d for q in query_ids for d in collection.qrels[q]}
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as out:
        for d in sorted(keep):
            title, _, text = collection.documents[d].partition("\n")
            out.write(json.dumps({"_id": d, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as out:
        for q in query_ids:
            out.write(json.dumps({"_id": q, "text": collection.queries[q]}) + "\n")
    with (root / "qrels" / "test.tsv").open("w") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for q in query_ids:
            out.writelines(f"{q}\t{d}\t{g}\n" for d, g in collection.qrels[q].items())
    return root


def test_cli_end_to_end(scifact, answerable, tmp_path, capsys) -> None:
    from llmrerank.cli import main

    data = write_slice(scifact, answerable, tmp_path / "slice")
    out = tmp_path / "run"
    argv = ["eval", "--data", str(data), "--backend", "fake", "--strategy", "listwise,pointwise", "none"]
    argv += ["--queries", "4", "--depth", str(DEPTH), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and f"prices as of {PRICES_AS_OF}" in printed
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == ["bm25", "listwise", "pointwise"]
    assert report["results"][1]["usage"]["calls"] == 4
    assert report["results"][2]["usage"]["calls"] == 4 * DEPTH
    assert len(report["results"][0]["per_query"]) == 4
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "--data", str(data), "--strategy", "bogus"]) == 2


def test_importing_the_package_pulls_no_eval_dependency() -> None:
    code = (
        "import sys, llmrerank, llmrerank.cli, llmrerank.pricing; "
        "print(sorted(m for m in ('bm25s', 'ir_measures', 'matplotlib', 'tqdm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hits_can_carry_their_bm25_score_and_halves_are_disjoint(scifact: Collection) -> None:
    seen: list[list[dict[str, object]]] = []

    def keep(query: str, docs: list[dict[str, object]]) -> list[int]:
        seen.append(docs)
        return list(range(len(docs)))[::-1]

    ids = list(scifact.queries)[:2]
    report = evaluate(scifact, keep, depth=3, queries=ids, with_scores=True)
    hits = scifact.bm25().search([scifact.queries[q] for q in ids], 3)
    assert [[(d["id"], d["score"]) for d in docs] for docs in seen] == hits
    assert all(d["content"] == scifact.documents[str(d["id"])] for docs in seen for d in docs)
    assert report.per_query[0].ranking == tuple(d for d, _ in hits[0][::-1])
    tuning, held_out = split_halves(scifact.queries)
    assert not set(tuning) & set(held_out) and sorted(tuning + held_out) == sorted(scifact.queries)
    assert split_halves(["10", "9", "x", "100"]) == (["9", "100"], ["10", "x"])


def test_cli_reports_degraded_queries_and_fails_when_nothing_was_reranked(
    scifact, answerable, tmp_path, capsys, monkeypatch
) -> None:
    from llmrerank.cli import main
    from testkit.server import FakeLLMServer, Reply

    data = write_slice(scifact, answerable, tmp_path / "slice")
    out = tmp_path / "run"
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    with FakeLLMServer(Reply(status=503, text="upstream is down")) as server:
        argv = ["eval", "--data", str(data), "--backend", "openai", "--base-url", server.base_url]
        argv += ["--strategy", "listwise", "--queries", "3", "--depth", str(DEPTH), "--out", str(out), "--no-progress"]
        code = main(argv)
    assert code == 1
    captured = capsys.readouterr()
    assert "degraded: listwise on 3 of 3 queries (call_failed 3)" in captured.out
    assert "503" in captured.out
    assert "listwise degraded on every query" in captured.err
    report = json.loads((out / "report.json").read_text())
    listwise = report["results"][1]
    assert listwise["degraded_queries"] == 3 and listwise["degraded_reasons"] == {"call_failed": 3}
    first = listwise["per_query"][0]
    assert first["status"] == "fallback" and first["degraded_reasons"] == ["call_failed"]
    assert first["diagnostics"][0]["code"] == "call_failed" and "503" in first["diagnostics"][0]["message"]


def test_missing_api_key_is_a_configuration_error_not_a_failed_call(scifact, answerable, tmp_path, monkeypatch, capsys):
    from llmrerank.cli import main

    data = write_slice(scifact, answerable, tmp_path / "slice")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # a hosted server (one on this machine or a private network needs no key: test_silent_servers.py)
    argv = ["eval", "--data", str(data), "--backend", "openai", "--base-url", "https://llm.example.com/v1"]
    argv += ["--strategy", "pointwise", "--queries", "2", "--depth", "5", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot create the OpenAI client" in err and "OPENAI_API_KEY" in err


def test_report_counts_partial_and_unreadable(scifact) -> None:
    backend = FakeBackend(respond=lambda p: "no ranking today")
    report = evaluate(scifact, Reranker("listwise", backend), depth=5, queries=2)
    assert report.degraded == 2 and report.always_degraded
    assert report.degraded_reasons == {"unreadable_answer": 2}
    assert report.first_problem() is not None and "fallback_input_order" in report.first_problem()
