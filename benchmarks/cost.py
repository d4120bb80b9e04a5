"""Calls, tokens and latency of each strategy for a top-10, on the loopback oracle.

Every strategy reranks the BM25 top ``--depth`` of the first ``--queries`` SciFact test queries for
the best ``--top-k``, through the real OpenAI SDK against one
:class:`~testkit.server.FakeLLMServer` on 127.0.0.1 that waits ``--latency`` seconds per
call and answers every prompt format by word overlap between the query and the documents it was
shown (:func:`~testkit.server.overlap_responder`: a rating per document, the best label
of a set or pair, the order of a window, and the first-token distribution when log-probs are asked
for). All strategies see the same judgement, so nDCG@10 checks that each reads its answers
faithfully and finds the judge's top-k; calls, tokens and ``p50 / latency`` (1.0 is one round of
parallel calls) are what the strategy costs. Tokens are the server's count (about 4 characters a token).
The last column is the mean per-query nDCG@10 difference from BM25 (same queries, same depth) with
its 95% paired-bootstrap interval (:func:`llmrerank.evaluation.paired_difference`).

    python benchmarks/cost.py --queries 30 --depths 20 100 --latency 0.2
    python benchmarks/cost.py --rows pointwise batch_score listwise --depths 20
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank import BatchScore, Listwise, Pairwise, Pointwise, Reranker, RerankResult, Setwise, Strategy
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.evaluation import EvalReport, evaluate, load_beir, paired_difference
from testkit.server import FakeLLMServer, overlap_responder

ROWS: dict[str, Callable[[], Strategy]] = {
    "pointwise": lambda: Pointwise(method="expected"),
    "pointwise_generate": lambda: Pointwise(method="generate"),
    "batch_score": lambda: BatchScore(batch_size=10),
    "batch_score_20": lambda: BatchScore(batch_size=20),
    "batch_score_2000": lambda: BatchScore(batch_size=10, max_doc_chars=2000),
    "listwise": lambda: Listwise(),
    "pairwise_sort": lambda: Pairwise(mode="sort"),
    "setwise_3": lambda: Setwise(set_size=3),
    "setwise": lambda: Setwise(set_size=4),
    "setwise_5": lambda: Setwise(set_size=5),
    "setwise_text": lambda: Setwise(set_size=4, use_logprobs=False),
}
"""The strategies measured, by row key."""

LABELS = {
    "pointwise": "pointwise (expected 0-10 from log-probs)",
    "pointwise_generate": "pointwise (generated score)",
    "batch_score": "batch_score (10 a call)",
    "batch_score_20": "batch_score (20 a call)",
    "batch_score_2000": "batch_score (10 a call, documents cut at 2000 characters as pointwise)",
    "listwise": "listwise (window 20, step 10)",
    "pairwise_sort": "pairwise sort",
    "setwise_3": "setwise, set of 3 (log-probs)",
    "setwise": "setwise, set of 4 (log-probs)",
    "setwise_5": "setwise, set of 5 (log-probs)",
    "setwise_text": "setwise, set of 4 (text answer)",
}


def measure(
    collection: Any, strategy: Strategy | None, base_url: str, *, depth: int, queries: int, top_k: int
) -> EvalReport:
    """One strategy's report; None is the BM25 order itself."""
    if strategy is None:
        return evaluate(collection, None, depth=depth, queries=queries)
    reranker = Reranker(strategy, OpenAIBackend("gpt-4o-mini", base_url=base_url, max_retries=0))

    async def rerank(query: str, texts: Sequence[str]) -> RerankResult[str]:
        return await reranker.arerank(query, texts, top_k=top_k)

    return evaluate(collection, rerank, depth=depth, queries=queries, name=strategy.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="BEIR folder (default: $LLMRERANK_DATA or shared/data/scifact)")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits per call")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    args = parser.parse_args(argv)
    collection = load_beir(args.data)
    head = "| depth | reranker | nDCG@10 | P@1 | calls/q | prompt tok/q | completion tok/q | p50 s/q | p50 / latency |"
    print(head + " ΔnDCG@10 vs BM25 [95% CI] |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    with FakeLLMServer(overlap_responder, latency=args.latency) as server:
        for depth in args.depths:
            bm25 = None
            for key in ["bm25", *args.rows]:
                strategy = ROWS[key]() if key in ROWS else None
                report = measure(
                    collection, strategy, server.base_url, depth=depth, queries=args.queries, top_k=args.top_k
                )
                n = max(report.queries, 1)
                bm25 = bm25 or report
                delta = "" if report is bm25 else str(paired_difference(report, bm25))
                label = LABELS.get(key, "bm25 (no reranking)")
                ratio = report.latency_p50 / args.latency if strategy is not None and args.latency else 0.0
                print(
                    f"| {depth} | {label} | {report.metrics['nDCG@10']:.3f} | {report.metrics['P@1']:.3f} "
                    f"| {report.usage.calls / n:.1f} | {report.usage.prompt_tokens / n:.0f} "
                    f"| {report.usage.completion_tokens / n:.0f} | {report.latency_p50:.2f} | {ratio:.1f} | {delta} |",
                    flush=True,
                )
                if report.degraded:
                    print(f"  {key}: degraded on {report.degraded} queries: {report.first_problem()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
