"""Listwise with scores: ``Listwise(method="first_token")`` against the generated permutation.

Both rerank the BM25 top ``--depth`` of SciFact test queries through the real OpenAI SDK against one
:class:`~testkit.server.FakeLLMServer` on 127.0.0.1 that waits ``--latency`` per call and
judges by word overlap between the query and each document it was shown: the text answer is the
overlap order (:func:`~llmrerank.testing.overlap_judge`), and the first-token log-probabilities
are a softmax over the documents' overlap (:func:`~llmrerank.testing.overlap_logprobs`), as a
model that believes its own ranking would give them. The same judgement behind both methods, so
the table shows what reading one token instead of a written permutation costs and gains: calls,
tokens, latency, and whether the scores come out (``score_kind``). It cannot show how a real model's
first-token distribution compares with its written order; measure that on your model with
``llmrerank eval --backend openai ...``. ``ΔnDCG@10 vs BM25`` is the mean per-query difference from BM25
on the same queries with its 95% paired-bootstrap interval (:func:`llmrerank.evaluation.paired_difference`).

    python benchmarks/listwise_scores.py --queries 30 --latency 0.2
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from benchmark_support import add_data_options, make_parser

from llmrerank import Listwise, Pointwise, Reranker
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.evaluation import EvalReport, evaluate, load_beir, paired_difference
from testkit.server import FakeLLMServer, overlap_responder


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_data_options(parser, queries=30, depth=20, latency=0.2)
    args = parser.parse_args(argv)
    collection = load_beir(args.data)
    strategies = {
        "bm25 (no reranking)": None,
        "listwise, generated order": Listwise(),
        "listwise, first_token": Listwise(method="first_token"),
        "pointwise, expected 0-10": Pointwise(method="expected"),
    }
    head = ["reranker", "nDCG@10", "ΔnDCG@10 vs BM25 [95% CI]", "P@1", "calls/q", "prompt tok/q"]
    print("| " + " | ".join([*head, "completion tok/q", "p50 s/q", "score_kind"]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    bm25: EvalReport | None = None
    with FakeLLMServer(overlap_responder, latency=args.latency) as server:
        os.environ.setdefault("OPENAI_API_KEY", "benchmark")
        for name, strategy in strategies.items():
            reranker = None
            kind = "-"
            if strategy is not None:
                reranker = Reranker(strategy, OpenAIBackend("gpt-4o-mini", base_url=server.base_url))
                probe = reranker.rerank(collection.queries[next(iter(collection.queries))], ["a b", "c d"])
                kind = probe.score_kind
            report = evaluate(collection, reranker, depth=args.depth, queries=args.queries, progress=False)
            n = max(report.queries, 1)
            bm25 = bm25 or report
            delta = "" if report is bm25 else str(paired_difference(report, bm25))
            print(
                f"| {name} | {report.metrics['nDCG@10']:.3f} | {delta} | {report.metrics['P@1']:.3f} "
                f"| {report.usage.calls / n:.1f} | {report.usage.prompt_tokens / n:.0f} "
                f"| {report.usage.completion_tokens / n:.0f} | {report.latency_p50:.2f} | {kind} |"
            )
            if report.degraded:
                print(f"  degraded on {report.degraded} queries: {report.first_problem()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
