"""Smoke tests of the benchmark scripts: each main() on a tiny slice, checking the rows, not the figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from llmrerank import ConfigurationError
from llmrerank.evaluation import default_data_path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytest.importorskip("bm25s")
pytest.importorskip("ir_measures")


def load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))  # as `python benchmarks/NAME.py` has it: for benchmark_support
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data() -> str:
    """The full SciFact collection where it is given, else the slice committed with the tests."""
    try:
        return str(default_data_path())
    except ConfigurationError:
        return str(Path(__file__).parent / "data" / "scifact-slice")


def table_rows(markdown: str) -> list[str]:
    """First cells of a markdown table's body rows."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [line.split("|")[1].strip() for line in lines[1:]]


def with_fusion(*names: str) -> list[str]:
    """Each strategy's row followed by its fused row, as quality.py prints them."""
    return [row for name in names for row in (name, f"{name} + fusion")]


def test_peers(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("langchain_openai")
    pytest.importorskip("llama_index.llms.openai")
    peers = load("peers")
    names = ["llmrerank-listwise", "llmrerank-pointwise", "langchain-listwise", "llamaindex-llmrerank"]
    args = ["--data", data, "--queries", "2", "--depth", "10", "--latency", "0.01", "--out", str(tmp_path)]
    assert peers.main([*args, "--rerankers", *names]) == 0
    printed = table_rows(capsys.readouterr().out)
    assert printed[0].startswith("BM25") and len(printed) == 1 + len(names)
    saved = json.loads((tmp_path / "peers.json").read_text())
    assert [r["key"] for r in saved["rows"]] == ["bm25", *names]
    for r in saved["rows"][1:]:
        assert r["calls/q"] >= 1 and r["prompt tok/q"] > 0 and r["failed calls"] == 0, r
    assert (tmp_path / "peers.md").read_text().startswith("| reranker |")


def test_peers_judge_answers_each_format() -> None:
    peers = load("peers")
    from testkit.server import ServerRequest

    lc = ServerRequest("openai", "POST", "/v1/chat/completions", user="cells", body={"response_format": {}})
    lc = ServerRequest(**{**lc.__dict__, "system": "Document ID: 0\n```dogs```\n\nDocument ID: 1\n```cells```\n\n"})
    assert json.loads(peers.langchain_answer(lc)) == {"ranked_document_ids": [1, 0]}
    li = "Let's try this now:\n\nDocument 1:\ndogs\n\nDocument 2:\nliving cells\n\n\nQuestion: cells\n\nAnswer:\n"
    assert peers.llamaindex_answer(li) == "Doc: 2, Relevance: 10"


def test_quality(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quality = load("quality")
    strategies = ["query_likelihood_pmi", "listwise", "pairwise:2"]
    args = ["--data", data, "--backend", "fake", "--queries", "3", "--depth", "8", "--no-progress", "--fusion", "rrf"]
    assert quality.main([*args, "--strategy", *strategies, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    expected = ["bm25", *with_fusion("query_likelihood_pmi", "listwise"), "bm25", *with_fusion("pairwise")]
    assert table_rows(printed) == expected
    assert "REPORT half" in printed
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert [(r["strategy"], r["queries"]) for r in saved["rows"]][-3:-1] == [("bm25", 2), ("pairwise", 2)]
    assert all(r["degraded"] == 0 for r in saved["rows"])
    fused = [r for r in saved["reports"] if r["name"].endswith("+ fusion")]
    assert len(fused) == 3 and all(r["usage"]["calls"] == 0 for r in fused)  # the LLM calls came from the cache
    for r in saved["reports"]:  # each query's figures are kept, so intervals can be computed again
        assert [q["query_id"] for q in r["per_query"]] and len(r["per_query"]) == r["queries"]
        assert all(set(q["metrics"]) >= {"nDCG@10", "P@1"} for q in r["per_query"])
    assert saved["rows"][2]["calls/q"] == saved["rows"][1]["calls/q"] == 8 + 1
    assert (tmp_path / "quality.png").stat().st_size > 0 and (tmp_path / "quality.md").is_file()


def test_tuning_stays_on_the_tuning_half(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmrerank.evaluation import load_beir, split_halves

    tuning = load("tuning")
    args = ["--data", data, "--backend", "fake", "--queries", "2", "--cuts", "300", "--out", str(tmp_path)]
    assert tuning.main([*args, "--methods", "query_likelihood", "pointwise_expected:2"]) == 0
    printed = capsys.readouterr().out
    assert "TUNING half" in printed and "best: query_likelihood " in printed
    saved = json.loads((tmp_path / "tuning.json").read_text())
    settings = [r["setting"] for r in saved["rows"]]
    assert settings[:4] == [
        "bm25 (2 q)",
        "query_likelihood pmi 300",
        "query_likelihood sum 300",
        "query_likelihood mean 300",
    ]
    # per method: bm25 and 3 x 9 fusions; then 3 normalisations for QL, 1 row for pointwise
    assert len(settings) == 2 * (1 + 3 * 9) + 3 + 1
    first, _ = split_halves(load_beir(data).queries)
    assert first[:2] == ["1", "5"]  # queries 3 and 13 (report half) are never tuned on
    assert tuning.roc_auc([(1.0, True), (0.0, False), (0.5, True), (0.5, False)]) == pytest.approx(0.875)


def test_overhead(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overhead = load("overhead")
    assert overhead.main(["--sizes", "5", "--repeats", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "overhead.json").read_text())["rows"]
    assert {(r["strategy"], r["api"]) for r in rows} == {
        (s, api)
        for s in ("pointwise", "pairwise", "listwise", "hybrid", "batch_score", "setwise")
        for api in ("rerank()", "await arerank()")
    }
    assert all(r["calls"] >= 1 for r in rows)
    assert "overhead" in capsys.readouterr().out and (tmp_path / "overhead.md").is_file()


def test_listwise_scores(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    bench = load("listwise_scores")
    assert bench.main(["--data", data, "--queries", "2", "--depth", "5", "--latency", "0"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out) == [
        "bm25 (no reranking)",
        "listwise, generated order",
        "listwise, first_token",
        "pointwise, expected 0-10",
    ]
    kinds = [line.rsplit("|", 2)[1].strip() for line in out.splitlines() if line.startswith("| ")][1:]
    assert kinds == ["-", "rank", "first_token", "logprob"]


def test_cost(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    bench = load("cost")
    rows = ["pointwise", "batch_score", "pairwise_sort", "setwise"]
    args = ["--data", data, "--queries", "2", "--depths", "8", "--top-k", "3", "--latency", "0"]
    assert bench.main([*args, "--rows", *rows]) == 0
    captured = capsys.readouterr()
    lines = [line.split("|") for line in captured.out.splitlines() if line.startswith("| 8 ")]
    assert [cells[2].strip() for cells in lines] == ["bm25 (no reranking)"] + [bench.LABELS[r] for r in rows]
    calls = {cells[2].strip(): float(cells[5]) for cells in lines}
    assert calls[bench.LABELS["batch_score"]] == 1.0  # 8 documents, 10 a call
    assert 0 < calls[bench.LABELS["setwise"]] < calls[bench.LABELS["pairwise_sort"]]
    assert "degraded" not in captured.err


def test_batch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    batch = load("batch")
    args = ["--engines", "local", "--rows", "6", "--docs", "3", "--latency", "0.01", "--concurrency", "2"]
    assert batch.main(args) == 0
    out = capsys.readouterr().out
    assert table_rows(out) == ["local"]
    assert "| local | 1 | 2 | 6 | 6 |" in out  # 6 listwise rows, one call each


def test_self_hosted_on_a_loopback_llama_cpp(data: str) -> None:
    from testkit.server import FakeLLMServer, Reply, ServerRequest, digit_split_reply

    def respond(request: ServerRequest) -> Reply | str:
        if "nothing else: 10" in request.user:
            return digit_split_reply({10: 0.8, 1: 0.2})
        return " > ".join(f"[{i}]" for i in range(request.user.count("<document id="), 0, -1))  # every id named

    with FakeLLMServer(respond, flavor="llama.cpp", served_model="smollm2", context_tokens=2048) as srv:
        argv = ["--base-url", srv.base_url, "--data", data, "--queries", "2", "--depth", "20"]
        report = load("self_hosted").main(argv)
    unknown, auto = report["arms"]
    assert unknown["context_400s"] == 2 and auto["context_400s"] == 0  # a fresh backend each query, then fitted
    assert auto["context_tokens"] == 2048 and auto["fitted"] and auto["reranked"] == 2
    assert report["digit_probe"]["tokens"] == ["1", "0"]
    assert report["digit_probe"]["first_token_only"] == pytest.approx(1.0)
    assert report["digit_probe"]["two_tokens"] == pytest.approx(10 * 0.8 + 1 * 0.2)
    assert "| context auto | 2/2 |" in report["table"] and "model smollm2" in report["table"]


def test_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = load("cache")
    assert cache.main(["--ops", "20", "--batch", "4", "--reranks", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "cache.json").read_text())["rows"]
    assert {r["cache"] for r in rows} == {"MemoryCache", "DiskCache", "RedisCache"}
    assert {"4 gets, one MGET", "4 gets, await aget_many", "await aset"} <= {r["operation"] for r in rows}
    assert all(r["ops"] >= 1 and 0 < r["p50_us"] <= r["p99_us"] for r in rows)
    assert "RedisCache" in capsys.readouterr().out and (tmp_path / "cache.md").is_file()


def test_serve(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    assert load("serve").main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert "reranks/s, 2 workers, 0 ms LLM" in rows and "added latency p50, 200 ms LLM" in rows
    assert "| 50 clients at once, 0 ms LLM | 0 errors |" in out


def test_methods_on_a_tiny_dl20(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/methods.py on a made-up DL20-layout folder: 2 queries, 30 candidates each."""
    pytest.importorskip("openai")
    (tmp_path / "qrels").mkdir()
    docs, queries, qrels, run = [], [], ["query-id\tcorpus-id\tscore"], ["query-id\tcorpus-id\trank\tscore"]
    for q in ("1", "2"):
        queries.append(json.dumps({"_id": q, "text": f"question {q}"}))
        for i in range(30):
            doc = f"{q}-{i}"
            docs.append(json.dumps({"_id": doc, "title": "", "text": f"passage {doc} text"}))
            qrels.append(f"{q}\t{doc}\t{(i * 7) % 4}")
            run.append(f"{q}\t{doc}\t{i + 1}\t{30 - i}")
    (tmp_path / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    (tmp_path / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    (tmp_path / "bm25-top100.tsv").write_text("\n".join(run) + "\n")
    bench = load("methods")
    args = ["--data", str(tmp_path), "--latency", "0", "--concurrency", "1", "--out", str(tmp_path / "out")]
    assert bench.main(["all", "--k", "1", "3", *args]) == 0
    out = capsys.readouterr().out
    firsts = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| 1.0 |")]
    assert firsts == [
        "listwise, self_consistency=1",
        "listwise, self_consistency=3",
        "listwise (window 20, step 10)",
        "topdown (window 20, top_k 10)",
        "topdown, self_consistency=3",
    ]
    saved = json.loads((tmp_path / "out" / "methods-all-bm25.json").read_text())["rows"]
    cost = {r["reranker"]: r for r in saved if r["part"] == "topdown cost"}
    assert cost["listwise (window 20, step 10)"]["rounds"] == 2.0  # 30 documents: 2 windows
    assert cost["topdown (window 20, top_k 10)"]["rounds"] >= 2.0
    oracle = next(line for line in out.splitlines() if line.startswith("| topdown (window 20, top_k 10) |"))
    assert float(oracle.split("|")[2]) == pytest.approx(1.0)  # the oracle finds the ideal top 10


def test_calibration(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    bench = load("calibration")
    args = ["--data", data, "--backend", "loopback", "--strategy", "pointwise_expected", "--queries", "8"]
    assert bench.main([*args, "--depth", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    maps = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| pointwise_expected |")]
    assert maps == ["raw (score / 10)", "isotonic", "platt"]
    saved = json.loads((tmp_path / "calibration.json").read_text())["rows"]
    assert [r["map"] for r in saved] == maps and (tmp_path / "calibration.png").stat().st_size > 0


def test_order_fusion(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("order_fusion")
    assert (
        bench.main(["--data", data, "--backend", "fake", "--queries", "3", "--depth", "5", "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("3 tuning-half SciFact test queries, BM25 top 5, nDCG@10")
    rows = table_rows(out)
    assert rows[:4] == list(bench.METHODS) and len(rows) == 4 + 1 + len(bench.PAIRS)  # the second table's header
    for line in out.splitlines()[-len(bench.PAIRS) :]:
        name, mean, ci = (cell.strip() for cell in line.strip("| ").split("|"))
        low, high = (float(x) for x in ci.strip("[]").split(","))
        assert " - " in name and low <= high and -1 <= float(mean) <= 1
    saved = json.loads((tmp_path / "order_fusion.json").read_text())
    assert saved["queries"] == 3 and list(saved["means"]) == list(bench.METHODS)
    assert all(0 <= m <= 1 for m in saved["means"].values()) and len(saved["differences"]) == len(bench.PAIRS)


@pytest.mark.slow
def test_first_rerank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One fresh process with the real local model (converted first if the cache lacks it)."""
    pytest.importorskip("torch")
    bench = load("first_rerank")
    assert bench.main(["--runs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "converted model" in out and "1 fresh processes of" in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(bench.PARTS) + " |" and len(table) == 3
    figures = [float(cell) for cell in table[2].strip("| ").split(" | ")]
    assert len(figures) == len(bench.PARTS) and all(f >= 0 for f in figures)
    assert figures[-1] >= max(figures[:-1])  # the total covers each part
    saved = json.loads((tmp_path / "first_rerank.json").read_text())
    assert len(saved["runs"]) == 1 and set(saved["median"]) == set(bench.PARTS) and saved["converted_mb"] > 0
