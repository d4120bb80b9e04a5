"""Evaluating like the papers: given first-stage runs, trec_eval parity, intervals, depth curves, published figures.

Most tests run on a slice of TREC DL20 committed under tests/data (3 queries, their full qrels, the BM25 top
20); the published-figure check runs on the full shipped run in ../shared, which CI has.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from llmrerank import ConfigurationError, Pointwise, Reranker
from llmrerank.cli import main
from llmrerank.evaluation import (
    binary_relevance,
    evaluate,
    evaluate_reranking,
    load_beir,
    paired_difference,
    read_qrels,
    read_run,
    run_rows,
)
from llmrerank.published import LABEL, PUBLISHED, collection_key, published_for
from llmrerank.testing import FakeBackend, overlap_judge

pytest.importorskip("ir_measures")

SLICE = Path(__file__).parent / "data" / "dl20-slice"
DL20 = Path("shared", "data", "trec-dl20-passage")
SHARED = next((f / DL20 for f in Path(__file__).resolve().parents if (f / DL20 / "corpus.jsonl").is_file()), None)


def reference_ndcg(ranking: list[str], judged: dict[str, int], cutoff: int = 10) -> float:
    """trec_eval's ndcg_cut written out: linear gains, log2(rank + 1) discounts, ideal from every judged grade."""
    dcg = sum(judged.get(d, 0) / math.log2(r + 2) for r, d in enumerate(ranking[:cutoff]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:cutoff]
    best = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / best if best else 0.0


def reference_rr(ranking: list[str], judged: dict[str, int], level: int) -> float:
    return next((1 / (r + 1) for r, d in enumerate(ranking) if judged.get(d, 0) >= level), 0.0)


# --------------------------------------------------------------------------- run files


def test_both_run_forms_read_alike_and_in_trec_eval_order(tmp_path) -> None:
    tsv, trec = read_run(SLICE / "bm25-top20.tsv"), read_run(SLICE / "bm25-top20.trec")
    assert tsv.hits == trec.hits and len(tsv.hits) == 3
    assert all(len(h) == 20 for h in tsv.hits.values())
    assert tsv.name == "bm25-top20"
    first = tsv.hits["1030303"]
    assert first[0][1] >= first[1][1] >= first[-1][1]
    # trec_eval sorts by score, ties by document id descending, and ignores the rank column.
    odd = tmp_path / "odd.trec"
    odd.write_text("q1 Q0 d1 1 1.0 x\nq1 Q0 d9 2 2.0 x\nq1 Q0 d5 3 2.0 x\nq1 Q0 d3 4 0.5 x\n")
    assert [d for d, _ in read_run(odd).hits["q1"]] == ["d9", "d5", "d1", "d3"]
    for bad, message in (
        ("q1 Q0 d1 1 1.0\n", "expected"),
        ("q1 Q0 d1 1 1.0 x\nq1 Q0 d1 2 0.5 x\n", "listed twice"),
        ("q1 Q0 d1 1 1.0 x\nq1 Q0 d2 x 0.5 x\n", "not a number"),
        ("q1 Q0 d1 1 nan x\n", "not finite"),
        ("", "no ranking"),
    ):
        odd.write_text(bad)
        with pytest.raises(ConfigurationError, match=message):
            read_run(odd)
    with pytest.raises(ConfigurationError, match="not found"):
        read_run(tmp_path / "missing.trec")


def test_the_run_is_the_baseline_and_matches_trec_eval_written_out() -> None:
    collection = load_beir(SLICE)
    run = read_run(SLICE / "bm25-top20.tsv")
    report = evaluate(collection, run=run, depth=20)
    assert report.name == "run:bm25-top20" and report.first_stage == "run:bm25-top20"
    assert report.relevance == 2 and report.usage.calls == 0
    for q in report.per_query:
        ranking = [d for d, _ in run.hits[q.query_id]]
        judged = dict(collection.qrels[q.query_id])
        assert list(q.ranking) == ranking
        assert q.metrics["nDCG@10"] == pytest.approx(reference_ndcg(ranking, judged))
        assert q.metrics["RR"] == pytest.approx(reference_rr(ranking, judged, 2))
        assert q.metrics["P@1"] == float(judged.get(ranking[0], 0) >= 2)
    # The judged documents outside the run count in the ideal ranking: most of the qrels are outside it.
    outside = sum(d not in dict(run.hits[q]) for q in collection.qrels for d in collection.qrels[q])
    assert outside > 400
    # A shallower depth cuts the run; the hits carry the run's scores for fusion.
    seen: list[list[float]] = []

    def keep(query: str, docs: list[dict]) -> list[int]:
        seen.append([d["score"] for d in docs])
        return list(range(len(docs)))

    same = evaluate(collection, keep, run=run, depth=5, with_scores=True)
    assert seen[0] == [s for _, s in run.hits["1030303"][:5]]
    assert same.metrics["nDCG@10"] < report.metrics["nDCG@10"] or same.metrics["nDCG@10"] == pytest.approx(
        report.metrics["nDCG@10"]
    )


def test_a_run_naming_unknown_documents_is_refused(tmp_path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("1030303\tnot-in-corpus\t1\t3.0\n")
    with pytest.raises(ConfigurationError, match=r"not in .*corpus\.jsonl"):
        evaluate(load_beir(SLICE), run=bad)


def test_binary_relevance_follows_the_collection_and_can_be_set() -> None:
    assert binary_relevance(read_qrels(SLICE / "qrels" / "test.tsv")) == 2
    assert binary_relevance({"q": {"a": 1, "b": 0}}) == 1
    queries = [{"id": "q", "query": "x", "documents": [{"id": i} for i in "abc"]}]
    truth = {"q": {"a": 1, "b": 3, "z": 2}}  # z: judged, never retrieved
    dl = evaluate_reranking(queries, truth, None)  # grades reach 3: level 2
    assert dl.relevance == 2 and dl.metrics["P@1"] == 0.0 and dl.metrics["RR"] == 0.5
    assert dl.metrics["nDCG@10"] == pytest.approx(reference_ndcg(list("abc"), truth["q"]))
    loose = evaluate_reranking(queries, truth, None, relevance=1)
    assert loose.relevance == 1 and loose.metrics["P@1"] == 1.0 and loose.metrics["RR"] == 1.0
    assert loose.metrics["nDCG@10"] == dl.metrics["nDCG@10"]  # nDCG reads the grades, not the level
    assert loose.metrics["R@10"] == pytest.approx(2 / 3) and dl.metrics["R@10"] == pytest.approx(1 / 2)
    with pytest.raises(ConfigurationError, match="relevance"):
        evaluate_reranking(queries, truth, None, relevance=0)


@pytest.mark.skipif(SHARED is None, reason="../shared/data/trec-dl20-passage is not beside this checkout")
def test_the_shipped_dl20_run_gives_the_published_bm25_figure(capsys) -> None:
    assert SHARED is not None
    report = evaluate(SHARED, run=SHARED / "bm25-top100.tsv", depth=100)
    assert report.queries == 54 and round(report.metrics["nDCG@10"], 4) == 0.4796
    trec = evaluate(SHARED, run=SHARED / "raw" / "trec_bm25_dl20.txt", depth=100)
    assert trec.metrics == report.metrics
    run, qrels = read_run(SHARED / "bm25-top100.tsv"), read_qrels(SHARED / "qrels" / "test.tsv")
    for q in report.per_query:  # trec_eval written out agrees query by query
        ranking = [d for d, _ in run.hits[q.query_id]]
        assert q.metrics["nDCG@10"] == pytest.approx(reference_ndcg(ranking, qrels[q.query_id]))
        assert q.metrics["RR"] == pytest.approx(reference_rr(ranking, qrels[q.query_id], 2))
    assert main(["eval", "--data", str(SHARED), "--run", str(SHARED / "bm25-top100.tsv"), "--strategy", "bm25",
                 "--depth", "100", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("run:bm25-top100"))
    assert "0.4796" in row.split()[:3]
    assert LABEL in out and "RankGPT (gpt-4o-mini)" in out and "0.6841" in out


# --------------------------------------------------------------------------- intervals


def test_paired_bootstrap_interval() -> None:
    queries = [{"id": f"q{i}", "query": "x", "documents": [{"id": "a"}, {"id": "b"}]} for i in range(12)]
    truth = {f"q{i}": {"b" if i % 3 else "a": 1} for i in range(12)}  # 8 of 12 want b first
    base = evaluate_reranking(queries, truth, None)
    swapped = evaluate_reranking(queries, truth, lambda q, docs: [1, 0])
    d = paired_difference(swapped, base)
    per = [s.metrics["nDCG@10"] - b.metrics["nDCG@10"] for s, b in zip(swapped.per_query, base.per_query, strict=True)]
    assert d.delta == pytest.approx(sum(per) / 12) and d.delta > 0
    assert d.low < d.delta < d.high and d.low >= min(per) and d.high <= max(per)
    assert d.method == "paired bootstrap" and d.queries == 12 and d.seed == 0
    assert paired_difference(swapped, base) == d  # seeded: the same interval each time
    assert paired_difference(swapped, base, seed=1) != d
    same = paired_difference(base, base)
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)
    assert str(d) == f"{d.delta:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    with pytest.raises(ConfigurationError, match="different queries"):
        paired_difference(swapped, evaluate_reranking(queries[:5], truth, None))


# --------------------------------------------------------------------------- the command


def test_eval_with_a_run_depth_curve_intervals_and_report(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["eval", "--data", str(SLICE), "--run", str(SLICE / "bm25-top20.trec"), "--backend", "fake"]
    args += ["--strategy", "pointwise", "--depth", "10", "5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^pointwise .* [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", printed, re.MULTILINE)
    assert "run bm25-top20 depth 5" in printed and "run bm25-top20 depth 10" in printed
    assert "count grade >= 2 relevant" in printed and "paired bootstrap" in printed
    curve = next(line for line in printed.splitlines() if line.startswith("strategy") and "depth 5" in line)
    assert curve.split() == ["strategy", "depth", "5", "depth", "10"]
    assert re.search(
        r"^pointwise +\d\.\d{4} [+-]\d\.\d{3} \[.*\], 5\.0 calls/q +\d\.\d{4} .*, 10\.0 calls/q", printed, re.M
    )
    report = json.loads((out / "report.json").read_text())
    assert report["depth"] == [5, 10] and report["first_stage"] == "run:bm25-top20" and report["relevance"] == 2
    rows = {(r["name"], r["depth"]): r for r in report["results"]}
    assert set(rows) == {("run:bm25-top20", 5), ("pointwise", 5), ("run:bm25-top20", 10), ("pointwise", 10)}
    # Depth 10 asks the 5 prompts of depth 5 again: the cache answers them.
    assert rows["pointwise", 5]["usage"]["calls"] == 5 * 3
    assert rows["pointwise", 10]["usage"]["calls"] == 5 * 3
    assert rows["pointwise", 10]["usage"]["cached_calls"] == 5 * 3
    d = rows["pointwise", 10]["vs_baseline"]
    assert d["method"] == "paired bootstrap" and d["low"] <= d["delta"] <= d["high"] and d["queries"] == 3
    assert rows["run:bm25-top20", 10]["vs_baseline"]["delta"] == 0.0
    assert report["published"] == []  # a slice: the full collection's figures do not apply
    assert (out / "depth.png").stat().st_size > 1000 and (out / "plot.png").is_file()


def test_eval_falls_back_to_the_committed_slice_saying_so(tmp_path, monkeypatch, capsys) -> None:
    import llmrerank.evaluation as evaluation

    monkeypatch.delenv("LLMRERANK_DATA", raising=False)
    monkeypatch.setattr(evaluation, "DEFAULT_COLLECTION", Path("no", "such", "collection"))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--strategy", "bm25", "--depth", "5", "--queries", "3", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "using the slice committed with the tests" in captured.err and "NOT the full collection" in captured.err
    assert "scifact-slice: 3 queries, BM25 depth 5" in captured.out
    monkeypatch.setattr(evaluation, "CHECKOUT_SLICE", tmp_path / "no-slice")  # an installed package
    assert main(["eval", "--strategy", "bm25", "--no-progress"]) == 2
    assert "no collection found" in capsys.readouterr().err


# --------------------------------------------------------------------------- published figures


def test_published_figures_pick_the_collection_and_depth() -> None:
    assert collection_key("../shared/data/trec-dl20-passage") == "dl20"
    assert collection_key("/data/scifact") == "scifact" and collection_key(SLICE) is None
    assert collection_key("tests/data/scifact-slice") is None and collection_key(None) is None
    at_100 = {f.method: f.value for f in published_for("dl20", 100)}
    assert at_100 == {"BM25": 0.4796, "RankGPT (gpt-4o-mini)": 0.6841, "RankZephyr 7B": 0.7080, "MonoT5-3B": 0.6887}
    assert [f.method for f in published_for("dl20", 20)] == ["BM25"]  # rerankers were published at depth 100
    assert {f.value for f in published_for("dl19", 100)} == {0.5058, 0.7345, 0.7365, 0.7173}
    (scifact,) = published_for("scifact", 10)
    assert scifact.figure() == "0.665-0.691"
    assert all(f.source for f in PUBLISHED)


# --------------------------------------------------------------------------- batch


def test_batch_reranks_a_run_file_into_a_run_trec_eval_reads(tmp_path, capsys) -> None:
    import ir_measures

    out = tmp_path / "job"
    args = ["batch", "--run", str(SLICE / "bm25-top20.tsv"), "--data", str(SLICE), "--depth", "8"]
    args += ["--out", str(out), "--backend", "fake", "--strategy", "pointwise", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "input.jsonl").read_text().splitlines()]
    run = read_run(SLICE / "bm25-top20.tsv")
    assert [r["query_id"] for r in rows] == list(run.hits)
    assert [(c["id"], c["score"]) for c in rows[0]["candidates"]] == list(run.hits[rows[0]["query_id"]][:8])
    reranked = read_run(out / "run.trec")
    assert {q: {d for d, _ in h} for q, h in reranked.hits.items()} == {
        q: {d for d, _ in h[:8]} for q, h in run.hits.items()
    }
    # trec_eval's reading (ir_measures' parser) sees the reranked order.
    parsed = {}
    for line in ir_measures.read_trec_run(str(out / "run.trec")):
        parsed.setdefault(line.query_id, []).append((line.score, line.doc_id))
    results = {
        json.loads(line)["query_id"]: json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()
    }
    for qid, scored in parsed.items():
        assert [d for _, d in sorted(scored, reverse=True)] == [c["id"] for c in results[qid]["candidates"]]
    assert main(args) == 0  # a rerun resumes on the same rows
    assert "3 done before" in capsys.readouterr().out


def test_batch_run_options_are_checked(tmp_path, capsys) -> None:
    base = ["batch", "--out", str(tmp_path / "o"), "--backend", "fake"]
    for extra, message in (
        (["--run", str(SLICE / "bm25-top20.tsv")], "--run needs --data"),
        (["rows.jsonl", "--run", str(SLICE / "bm25-top20.tsv"), "--data", str(SLICE)], "either INPUT or --run"),
        (["--data", str(SLICE)], "go with --run"),
        ([], "give an INPUT"),
    ):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="not in"):
        run_rows(SLICE / "bm25-top20.tsv", load_beir(Path(__file__).parent / "data" / "scifact-slice"))


def test_pointwise_reranks_a_run_through_the_python_api() -> None:
    report = evaluate(
        load_beir(SLICE),
        Reranker(Pointwise(), FakeBackend(respond=overlap_judge)),
        run=SLICE / "bm25-top20.tsv",
        depth=10,
        name="pw",
    )
    assert report.first_stage == "run:bm25-top20" and report.usage.calls == 30 and report.name == "pw"


def test_demo_says_which_data_its_figures_come_from(capsys) -> None:
    from llmrerank import demo

    scifact_slice = load_beir(demo.CHECKOUT_SLICE)
    assert demo.on_slice(scifact_slice)
    assert "committed SciFact slice (20 queries), not the full collection" in demo.data_label(scifact_slice)
    other = load_beir(SLICE)
    assert not demo.on_slice(other) and "(3 judged test queries)" in demo.data_label(other)
    example = demo.load_example(None, 3, scifact_slice)
    assert "the slice committed with the tests" in example.source


def test_dl20_benchmark_runs_in_resumable_chunks_with_intervals(tmp_path, capsys) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "dl20.py"
    spec = importlib.util.spec_from_file_location("benchmark_dl20", path)
    assert spec is not None and spec.loader is not None
    dl20 = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = dl20
    spec.loader.exec_module(dl20)
    args = ["--data", str(SLICE), "--run", str(SLICE / "bm25-top20.tsv"), "--backend", "fake", "--chunk", "2"]
    args += ["--strategy", "query_likelihood", "--depth", "5", "10", "--out", str(tmp_path)]
    assert dl20.main(args) == 0
    first = capsys.readouterr()
    assert first.err.count("chunk ") == 2 * 2 * 2  # 2 chunks x 2 depths x (bm25, query_likelihood)
    saved = json.loads((tmp_path / "dl20.json").read_text())
    rows = {(r["name"], r["depth"]): r for r in saved["reports"]}
    assert set(rows) == {("bm25", 5), ("query_likelihood", 5), ("bm25", 10), ("query_likelihood", 10)}
    assert all(r["queries"] == 3 and r["relevance"] == 2 for r in rows.values())
    ql = rows["query_likelihood", 10]
    assert ql["usage"]["cached_calls"] > 0  # depth 10 reuses depth 5's scorings
    assert ql["vs_bm25"]["low"] <= ql["vs_bm25"]["delta"] <= ql["vs_bm25"]["high"]
    assert rows["bm25", 10]["metrics"]["nDCG@10"] == pytest.approx(
        evaluate(load_beir(SLICE), run=SLICE / "bm25-top20.tsv", depth=10).metrics["nDCG@10"]
    )
    assert "the first 3 of 3 judged queries" in (tmp_path / "dl20.md").read_text()
    assert dl20.main(args) == 0  # resumed: every chunk is read back, none rerun
    again = capsys.readouterr()
    assert "chunk " not in again.err
    resumed = json.loads((tmp_path / "dl20.json").read_text())["reports"]
    assert [(r["metrics"], r["vs_bm25"], r["usage"]) for r in resumed] == [
        (r["metrics"], r["vs_bm25"], r["usage"]) for r in saved["reports"]
    ]
