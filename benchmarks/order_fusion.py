"""Fusion with the retriever's order against fusion with its scores, on the TUNING half of SciFact.

A LangChain vector-store retriever gives no score, so the local default (query likelihood, min-max
fusion at LLM weight 0.5) fuses with the input order as reciprocal ranks instead
(:func:`llmrerank.fusion.input_order_scores`). This scores each query's BM25 top ``--depth`` once
with query likelihood (documents cut to 400 characters) and reports nDCG@10 of BM25, query
likelihood alone (what LangChain users got before), fused with the BM25 scores, and fused with the
BM25 order, with paired bootstrap 95% intervals of the differences over the queries.

    OMP_NUM_THREADS=1 nice python benchmarks/order_fusion.py --queries 60

``--backend fake`` (word overlap, no model) checks the plumbing in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

from llmrerank import Fusion, Reranker
from llmrerank.evaluation import load_beir, split_halves
from llmrerank.fusion import fuse
from llmrerank.protocol import Ranking
from llmrerank.routing import make_backend
from llmrerank.strategies import QueryLikelihood

METHODS = ("BM25", "query likelihood", "fused with BM25 scores", "fused with BM25 order")
PAIRS = ((3, 1), (3, 0), (3, 2), (2, 0))


def ndcg10(ranked: list[str], judged: dict[str, int]) -> float:
    """nDCG@10 with exponential gains."""
    dcg = sum((2 ** judged.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(judged.values(), reverse=True)[:10]
    best = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / best if best else 0.0


def interval(values: list[float], rounds: int = 5000) -> tuple[float, float]:
    """Paired bootstrap 95% interval of the mean of per-query differences."""
    rng = random.Random(0)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="BEIR folder (default: shared/data/scifact)")
    parser.add_argument("--queries", type=int, default=60, help="first N tuning-half queries (default: 60)")
    parser.add_argument("--depth", type=int, default=10, help="BM25 documents per query (default: 10)")
    parser.add_argument("--backend", default="local", choices=["local", "fake"], help="default: local")
    parser.add_argument("--out", help="folder for order_fusion.json")
    args = parser.parse_args(argv)

    collection = load_beir(args.data)
    tuning, _ = split_halves(collection.qrels)
    ids = tuning[: args.queries]
    hits = collection.bm25().search([collection.queries[q] for q in ids], args.depth)
    reranker = Reranker(QueryLikelihood(), make_backend(args.backend), fusion=None)
    fusion = Fusion("minmax", weight=0.5)
    rows = []
    started = time.perf_counter()
    for qid, found in zip(ids, hits, strict=True):
        docs = [d for d, _ in found]
        result = reranker.rerank(collection.queries[qid], [collection.documents[d][:400] for d in docs])
        ranking = Ranking(list(result.indices), "likelihood", {item.index: item.score for item in result})
        orders = (
            list(range(len(docs))),
            result.indices,
            fuse(ranking, [s for _, s in found], fusion).order,
            fuse(ranking, [None] * len(docs), fusion).order,
        )
        rows.append([ndcg10([docs[i] for i in order], dict(collection.qrels[qid])) for order in orders])
    n = len(rows)
    means = [sum(r[m] for r in rows) / n for m in range(len(METHODS))]
    print(
        f"{n} tuning-half SciFact test queries, BM25 top {args.depth}, nDCG@10 "
        f"({time.perf_counter() - started:.0f} s)\n"
    )
    print("| method | nDCG@10 |\n|---|---:|")
    for name, mean in zip(METHODS, means, strict=True):
        print(f"| {name} | {mean:.3f} |")
    print("\n| difference | mean | 95% CI (paired bootstrap) |\n|---|---:|---|")
    differences = {}
    for a, b in PAIRS:
        low, high = interval([r[a] - r[b] for r in rows])
        differences[f"{METHODS[a]} - {METHODS[b]}"] = (means[a] - means[b], low, high)
        print(f"| {METHODS[a]} - {METHODS[b]} | {means[a] - means[b]:+.3f} | [{low:+.3f}, {high:+.3f}] |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {"queries": n, "depth": args.depth, "means": dict(zip(METHODS, means, strict=True))}
        record["differences"] = differences
        (out / "order_fusion.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
