"""Pick the local model's settings on the TUNING half of SciFact's judged test queries (never the report half).

The 300 judged test queries are split by :func:`llmrerank.evaluation.split_halves` (ids sorted
numerically, then alternately assigned: the 1st, 3rd, 5th, ... to tuning, the others to report).
On the tuning half, BM25 top ``--depth`` documents are reranked by each method in ``--methods``
(``name`` or ``name:queries``; names: ``query_likelihood``, ``pointwise_expected``,
``pointwise_yes_no``) with the local SmolLM2-135M model, once per document cut in ``--cuts``:

- query likelihood with each normalisation (``sum``, ``mean``, ``pmi``): nDCG@10, P@1, and the
  ROC-AUC of the scores pooled over every (query, document) pair, i.e. how well one threshold
  separates judged-relevant documents from the rest across queries (within a query the three
  normalisations order documents identically, so only the pooled figure can tell them apart);
- each method's scores fused with the BM25 scores (:class:`llmrerank.Fusion`): ``zscore``,
  ``minmax`` and ``rrf`` at LLM weights 0.1 ... 0.9 (the LLM calls are made once and cached).

    OMP_NUM_THREADS=1 nice python benchmarks/tuning.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/
from benchmark_support import add_data_options, machine, make_parser, publish

from llmrerank import Fusion, MemoryCache, Pointwise, Reranker, RerankResult, Strategy
from llmrerank.evaluation import Collection, EvalReport, evaluate, load_beir, split_halves
from llmrerank.fusion import METHODS
from llmrerank.routing import make_backend
from llmrerank.strategies import QueryLikelihood
from testkit.server import loopback_backend

WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NORMALIZATIONS = ("pmi", "sum", "mean")  # pmi first: it scores the documents plus the baseline


def make_strategy(method: str, cut: int, normalization: str = "pmi") -> Strategy:
    """The strategy measured under ``method`` with documents cut to ``cut`` characters."""
    if method == "query_likelihood":
        return QueryLikelihood(normalization=normalization, max_doc_chars=cut)  # type: ignore[arg-type]
    if method in ("pointwise_expected", "pointwise_yes_no"):
        return Pointwise(method=method.removeprefix("pointwise_"), max_doc_chars=cut)  # type: ignore[arg-type]
    raise SystemExit(f"unknown method {method!r}")


def roc_auc(pairs: Sequence[tuple[float, bool]]) -> float:
    """P(a relevant document scores above a non-relevant one), ties counting half."""
    ranked = sorted(pairs, key=lambda p: p[0])
    positives = sum(1 for _, rel in ranked if rel)
    negatives = len(ranked) - positives
    if not positives or not negatives:
        return float("nan")
    total, below, i = 0.0, 0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        group_pos = sum(1 for _, rel in ranked[i:j] if rel)
        total += group_pos * (below + (j - i - group_pos) / 2)
        below += (j - i) - group_pos
        i = j
    return total / (positives * negatives)


def measure(
    collection: Collection, reranker: Reranker, ids: list[str], depth: int, name: str
) -> tuple[EvalReport, list[tuple[float, bool]]]:
    """Evaluate ``reranker`` on ``ids`` (hits carry their BM25 score); also the (score, relevant) pairs."""
    pooled: list[tuple[float, bool]] = []
    relevant = {q: {d for d, g in collection.qrels[q].items() if g > 0} for q in ids}
    by_text = {collection.queries[q]: q for q in ids}

    async def rerank(query: str, docs: list[dict[str, Any]]) -> RerankResult:
        result = await reranker.arerank(query, docs)
        qid = by_text[query]
        pooled.extend((item.score, item.document["id"] in relevant[qid]) for item in result if item.score is not None)
        return result

    report = evaluate(collection, rerank, depth=depth, queries=ids, name=name, with_scores=True)
    return report, pooled


def row(name: str, report: EvalReport, pooled: list[tuple[float, bool]] | None = None) -> dict[str, Any]:
    """One table row."""
    n = max(report.queries, 1)
    return {
        "setting": name,
        "queries": report.queries,
        "nDCG@10": report.metrics["nDCG@10"],
        "P@1": report.metrics["P@1"],
        "AUC": roc_auc(pooled) if pooled else None,
        "calls/q": report.usage.calls / n,
        "s/q": report.wall_seconds / n,
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a markdown table."""
    head = ["setting", "queries", "nDCG@10", "P@1", "pooled AUC", "calls/q", "s/q"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        auc = "" if r["AUC"] is None else f"{r['AUC']:.3f}"
        cells = [r["setting"], str(r["queries"]), f"{r['nDCG@10']:.3f}", f"{r['P@1']:.3f}", auc]
        lines.append("| " + " | ".join([*cells, f"{r['calls/q']:.1f}", f"{r['s/q']:.2f}"]) + " |")
    return "\n".join(lines)


def best(rows: Sequence[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The row starting with ``prefix`` with the highest nDCG@10 (then P@1)."""
    candidates = [r for r in rows if r["setting"].startswith(prefix)]
    return max(candidates, key=lambda r: (round(r["nDCG@10"], 6), r["P@1"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; print the tables and the best settings; with ``--out`` write tuning.json and tuning.md."""
    parser = make_parser(__doc__)
    add_data_options(parser)
    parser.add_argument("--backend", default="local", choices=["local", "fake", "loopback"])
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--queries", type=int, default=150, help="tuning queries for methods given without :N")
    parser.add_argument("--cuts", type=int, nargs="+", default=[400, 800], help="document cuts in characters")
    parser.add_argument("--methods", nargs="+", default=["query_likelihood", "pointwise_expected:50"])
    parser.add_argument("--out", help="folder for tuning.json and tuning.md")
    args = parser.parse_args(argv)
    if args.backend == "loopback":  # the word-overlap oracle over HTTP (FakeLLMServer)
        with loopback_backend() as backend:
            return run(args, backend, argv)
    return run(args, make_backend(args.backend, None, None), argv)


def run(args: argparse.Namespace, backend: Any, argv: Sequence[str] | None) -> int:
    """The measurement of :func:`main` with ``backend``."""
    collection = load_beir(args.data)
    tuning, _ = split_halves(collection.queries)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for spec in args.methods:
        method, _, count = spec.partition(":")
        ids = tuning[: int(count) if count else args.queries]
        bm25 = evaluate(collection, None, depth=args.depth, queries=ids)
        rows.append(row(f"bm25 ({len(ids)} q)", bm25))
        for cut in args.cuts:
            cache = MemoryCache(maxsize=1_000_000)
            norms = NORMALIZATIONS if method == "query_likelihood" else ("",)
            for norm in norms:
                strategy = make_strategy(method, cut, norm or "pmi")
                label = f"{method} {norm} {cut}".replace("  ", " ")
                report, pooled = measure(
                    collection, Reranker(strategy, backend, cache=cache, fusion=None), ids, args.depth, label
                )
                rows.append(row(label, report, pooled))
                print(f"{label}: {report.wall_seconds:.0f} s", file=sys.stderr, flush=True)
            strategy = make_strategy(method, cut)
            for how in METHODS:
                for weight in WEIGHTS:
                    fusion = Fusion(how, weight)  # type: ignore[arg-type]
                    reranker = Reranker(strategy, backend, cache=cache, fusion=fusion)
                    report, _ = measure(collection, reranker, ids, args.depth, f"{method} {cut} + {how} {weight}")
                    rows.append(row(f"{method} {cut} + {how} {weight:g}", report))
    table = markdown(rows)
    choices = [best(rows, f"{spec.partition(':')[0]} ") for spec in args.methods]
    note = (
        f"SciFact test, TUNING half (split_halves), BM25 top {args.depth}; backend {args.backend}, model "
        f"{backend.model}; {machine()}; {time.strftime('%Y-%m-%d')}, "
        f"{time.perf_counter() - started:.0f} s in all; best: " + "; ".join(r["setting"] for r in choices)
    )
    publish("tuning", table, note, args.out, argv, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
