"""Benchmark 1: ranking quality, BM25 against each llmrerank method, with and without fusion, on SciFact.

The 300 judged SciFact test queries are split by :func:`llmrerank.evaluation.split_halves` (ids
sorted numerically, alternately assigned); settings are picked on the tuning half
(``benchmarks/tuning.py``) and this script reports on the REPORT half by default (``--half``).
Each method reranks the BM25 top ``--depth`` of the first N queries of that half and is compared
with BM25 on exactly the same queries (ΔnDCG@10 with its 95% paired-bootstrap interval over them).
Methods (``name`` or ``name:queries``):

- ``pointwise_expected``, ``pointwise_yes_no``: a 0-10 rating from log-probs / P(Yes);
- ``query_likelihood_sum``, ``query_likelihood_mean``, ``query_likelihood_pmi``: log P(query | document);
- ``listwise`` (window 20, one call here), ``pairwise`` (sort mode);
- ``hybrid``: the bundled all-MiniLM-L6-v2 bi-encoder keeps half, the backend's preferred strategy
  ranks them (query likelihood for the local model, listwise for API models).

``--fusion`` (``method:weight``, default: the backend's ``preferred_fusion``) adds a row per method
with its scores fused with the BM25 scores (the hits are passed as dicts carrying their BM25
``score``); the fused row reuses the unfused run's LLM calls through a cache, so its cost columns
repeat the unfused row's. The query-likelihood normalisations share one cache too: the first one
run pays for the scorings (``pmi`` needs one more per query than ``sum`` and ``mean``) and the
others repeat its cost columns. ``--max-doc-chars`` cuts documents for every method (0: each one's own
default).

    OMP_NUM_THREADS=1 nice python benchmarks/quality.py --out benchmarks/results      # local SmolLM2-135M
    python benchmarks/quality.py --backend openai --model gpt-4o-mini --strategy listwise pointwise_expected

The default backend is the local SmolLM2-135M model (CPU); ``--backend fake`` (word overlap, no
model) checks the plumbing in seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/
from benchmark_support import add_data_options, machine, make_parser, publish

from llmrerank import (
    BatchScore,
    Fusion,
    Hybrid,
    Listwise,
    MemoryCache,
    Pairwise,
    Pointwise,
    QueryLikelihood,
    Reranker,
    Setwise,
    Strategy,
)
from llmrerank.evaluation import EvalReport, evaluate, load_beir, paired_difference, split_halves
from llmrerank.routing import make_backend
from testkit.server import loopback_backend

DEFAULT_STRATEGIES = [
    "query_likelihood_pmi",
    "query_likelihood_sum",
    "query_likelihood_mean",
    "pointwise_expected",
    "pointwise_yes_no",
    "hybrid",
    "listwise",
    "pairwise:10",
]
"""Every local method; pairwise (about 48 calls a query) on fewer queries."""


def make_strategy(name: str, depth: int, max_doc_chars: int | None = None, preferred: str = "listwise") -> Strategy:
    """The strategy measured under ``name``; ``max_doc_chars`` (0 or None: each strategy's own) cuts documents.

    Hybrid ranks the survivors with the backend's ``preferred`` strategy.
    """
    clip: dict[str, Any] = {"max_doc_chars": max_doc_chars} if max_doc_chars else {}
    inner = {"pointwise": Pointwise, "query_likelihood": QueryLikelihood}.get(preferred, Listwise)(**clip)
    strategies: dict[str, Any] = {
        "pointwise": lambda: Pointwise(**clip),
        "pointwise_expected": lambda: Pointwise(method="expected", **clip),
        "pointwise_yes_no": lambda: Pointwise(method="yes_no", **clip),
        "query_likelihood": lambda: QueryLikelihood(**clip),
        "query_likelihood_sum": lambda: QueryLikelihood(normalization="sum", **clip),
        "query_likelihood_mean": lambda: QueryLikelihood(normalization="mean", **clip),
        "query_likelihood_pmi": lambda: QueryLikelihood(normalization="pmi", **clip),
        "pairwise": lambda: Pairwise(mode="sort", **clip),
        "listwise": lambda: Listwise(**clip),
        "hybrid": lambda: Hybrid(cross_encoder=None, keep=max(2, depth // 2), llm=inner),
        "batch_score": lambda: BatchScore(**clip),
        "setwise": lambda: Setwise(**clip),
    }
    if name not in strategies:
        raise SystemExit(f"unknown strategy {name!r}: use {', '.join(strategies)}")
    return strategies[name]()


def parse_fusion(value: str | None, backend: Any) -> Fusion | None:
    """``method:weight`` (``none`` for no fusion rows); None: the backend's preferred fusion."""
    if value is None:
        preferred: Fusion | None = backend.preferred_fusion
        return preferred
    if value.lower() == "none":
        return None
    method, _, weight = value.partition(":")
    return Fusion(method, float(weight) if weight else 0.5)  # type: ignore[arg-type]


def parse_strategies(values: Sequence[str], default_queries: int) -> dict[int, list[str]]:
    """``name`` or ``name:queries`` -> {queries: [names]}, in the order given."""
    groups: dict[int, list[str]] = {}
    for value in values:
        name, _, count = value.partition(":")
        groups.setdefault(int(count) if count else default_queries, []).append(name)
    return groups


def row(r: EvalReport, cost: EvalReport | None = None, baseline: EvalReport | None = None) -> dict[str, Any]:
    """The figures of one report that the table shows; the cost columns from ``cost`` when given;
    the 95% paired-bootstrap interval of the nDCG@10 difference from ``baseline`` (BM25, same queries)."""
    paid = cost or r
    n = max(paid.queries, 1)
    difference = paired_difference(r, baseline) if baseline is not None and baseline is not r else None
    return {
        "strategy": r.name,
        "queries": r.queries,
        "nDCG@10": r.metrics["nDCG@10"],
        "ΔnDCG@10 95% CI": None if difference is None else [difference.low, difference.high],
        "MRR@10": r.metrics["RR@10"],
        "P@1": r.metrics["P@1"],
        "calls/q": paid.usage.calls / n,
        "tokens/q": paid.usage.total_tokens / n,
        "s/q": paid.wall_seconds / n,
        "degraded": r.degraded,
    }


def per_query_figures(report: EvalReport) -> dict[str, Any]:
    """The report's dict with each query's metrics (no rankings or diagnostics), so that intervals
    can be computed again from the stored file."""
    out = report.to_dict(False)
    out["per_query"] = [{"query_id": q.query_id, "metrics": dict(q.metrics)} for q in report.per_query]
    return out


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table in markdown; ΔnDCG@10 against the BM25 row of the same query count."""
    base = {r["queries"]: r["nDCG@10"] for r in rows if r["strategy"] == "bm25"}
    head = ["strategy", "queries", "nDCG@10", "ΔnDCG@10 [95% CI]", "MRR@10", "P@1", "calls/q", "tokens/q", "s/q"]
    head.append("degraded")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        delta = r["nDCG@10"] - base.get(r["queries"], r["nDCG@10"])
        ci = r.get("ΔnDCG@10 95% CI")
        shown = f"{delta:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
        cells = [r["strategy"], str(r["queries"]), f"{r['nDCG@10']:.3f}", shown, f"{r['MRR@10']:.3f}"]
        cells += [f"{r['P@1']:.3f}", f"{r['calls/q']:.1f}", f"{r['tokens/q']:.0f}", f"{r['s/q']:.2f}"]
        lines.append("| " + " | ".join([*cells, str(r["degraded"])]) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], title: str, path: Path) -> None:
    """ΔnDCG@10 over BM25 (on the same queries) against LLM calls per query; identical points share a label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {r["queries"]: r["nDCG@10"] for r in rows if r["strategy"] == "bm25"}
    points: dict[tuple[float, float], list[str]] = {}
    for r in rows:
        if r["strategy"] != "bm25":
            key = (round(r["calls/q"], 1), round(r["nDCG@10"] - base.get(r["queries"], r["nDCG@10"]), 4))
            name = r["strategy"].replace("query_likelihood_", "QL ").replace("pointwise_", "pw ")
            points.setdefault(key, []).append(f"{name} ({r['queries']} q)")
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=100)
    ax.axhline(0.0, color="grey", linewidth=1)
    colors = plt.get_cmap("tab20").colors
    for n, ((calls, delta), labels) in enumerate(sorted(points.items(), key=lambda p: -p[0][1])):
        fused = all(label.split(" (")[0].endswith("+ fusion") for label in labels)
        label = " = ".join(labels)  # a legend, not annotations: the points crowd at 10 calls
        ax.scatter([calls], [delta], s=40, zorder=3, marker="D" if fused else "o", color=colors[n % 20], label=label)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.margins(y=0.12)
    ax.set_xlim(right=max(c for c, _ in points) * 20 if points else 10)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=-0.3)
    ax.set_xlabel("LLM calls per query")
    ax.set_ylabel("ΔnDCG@10 over BM25 (same queries)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; with ``--out``, write quality.json, quality.md, quality.png."""
    parser = make_parser(__doc__)
    add_data_options(parser)
    parser.add_argument("--backend", default="local", choices=["local", "openai", "anthropic", "fake", "loopback"])
    parser.add_argument("--model")
    parser.add_argument("--base-url")
    parser.add_argument("--depth", type=int, default=10, help="BM25 documents reranked per query (default: 10)")
    parser.add_argument("--queries", type=int, default=50, help="queries for strategies given without :N (default: 50)")
    parser.add_argument("--half", choices=["report", "tuning"], default="report", help="which half (default: report)")
    parser.add_argument("--max-doc-chars", type=int, default=400, help="cut documents to N characters (default: 400)")
    parser.add_argument("--strategy", nargs="+", default=DEFAULT_STRATEGIES, help="name or name:queries")
    parser.add_argument("--fusion", help="method:weight for the fused rows, or none (default: the backend's)")
    parser.add_argument("--out", help="folder for quality.json, quality.md and quality.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.backend == "loopback":  # the word-overlap oracle over HTTP (FakeLLMServer)
        with loopback_backend() as backend:
            return run(args, backend, argv)
    return run(args, make_backend(args.backend, args.model, args.base_url), argv)


def run(args: argparse.Namespace, backend: Any, argv: Sequence[str] | None) -> int:
    """The measurement of :func:`main` with ``backend``."""
    collection = load_beir(args.data)
    tuning, report = split_halves(collection.queries)
    half = report if args.half == "report" else tuning
    fusion = parse_fusion(args.fusion, backend)
    reports: list[EvalReport] = []
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for count, names in parse_strategies(args.strategy, args.queries).items():
        common: dict[str, Any] = {"depth": args.depth, "queries": half[:count], "progress": not args.no_progress}
        bm25 = evaluate(collection, None, **common)
        reports.append(bm25)
        rows.append(row(bm25))
        shared: dict[str, tuple[MemoryCache, EvalReport]] = {}  # per family: cache, first run (the payer)
        for name in names:
            strategy = make_strategy(name, args.depth, args.max_doc_chars, backend.preferred_strategy)
            family = strategy.name if strategy.name == "query_likelihood" else name
            cache, payer = shared.get(family, (MemoryCache(maxsize=1_000_000), None))
            plain = evaluate(collection, Reranker(strategy, backend, cache=cache, fusion=None), name=name, **common)
            payer = payer or plain
            shared[family] = (cache, payer)
            reports.append(plain)
            rows.append(row(plain, cost=payer, baseline=bm25))
            print(f"{name}: {plain.wall_seconds:.0f} s", file=sys.stderr, flush=True)
            if fusion is not None:
                fused_reranker = Reranker(strategy, backend, cache=cache, fusion=fusion)
                fused = evaluate(collection, fused_reranker, name=f"{name} + fusion", with_scores=True, **common)
                reports.append(fused)
                rows.append(row(fused, cost=payer, baseline=bm25))
    table = markdown(rows)
    fused_note = f"fusion: {fusion.describe()} with the BM25 scores" if fusion is not None else "no fusion rows"
    note = (
        f"SciFact test, {args.half.upper()} half (split_halves), BM25 top {args.depth}; documents cut to "
        f"{args.max_doc_chars or 'its own default number of'} characters; hybrid: MiniLM keeps "
        f"{max(2, args.depth // 2)}, {backend.preferred_strategy} ranks them; {fused_note} (cost columns: the "
        f"unfused run's; the query-likelihood normalisations share the first one's scorings); "
        f"backend {args.backend}, model {backend.model}; {machine()}; "
        f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s in all"
    )
    publish("quality", table, note, args.out, argv, rows=rows, reports=[per_query_figures(r) for r in reports])
    if args.out:
        title = f"SciFact ({args.half} half), BM25 top {args.depth} reranked by {backend.model}"
        plot(rows, title, Path(args.out) / "quality.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
