"""Which log-prob pointwise method ranks better with the local model: ``expected`` or ``yes_no``?

Reranks the BM25 top ``--depth`` of the first ``--queries`` SciFact test queries with
``LocalBackend`` (SmolLM2-135M-Instruct) and both methods, and prints nDCG@10 (plus the BM25
baseline) and the speed in prompts per second. Documents are cut to ``--max-doc-chars`` to keep
the run short on a small CPU (defaults finish in a few minutes on 2 cores)::

    .venv/bin/python benchmarks/pointwise_method.py --queries 40 --depth 10 --max-doc-chars 400  # the default

Needs the ``local`` and ``eval`` extras and the SciFact folder (``$LLMRERANK_DATA`` or
``shared/data/scifact`` beside the checkout).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmark_support import add_data_options, make_parser

from llmrerank import Pointwise, Reranker
from llmrerank.backends.local import LocalBackend
from llmrerank.evaluation import evaluate, load_beir


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_data_options(parser, queries=12, depth=10)
    parser.add_argument("--max-doc-chars", type=int, default=500)
    parser.add_argument("--dtype", help="torch dtype for the model (default: the backend's)")
    args = parser.parse_args(argv)

    collection = load_beir(args.data)
    baseline = evaluate(collection, None, depth=args.depth, queries=args.queries)
    rows = [("bm25", baseline.metrics["nDCG@10"], None, None)]
    for method in ("expected", "yes_no"):
        backend = LocalBackend(pointwise_method=method, dtype=args.dtype)
        load = backend.load()
        if load:
            print(f"model loaded in {load:.1f}s", file=sys.stderr)
        strategy = Pointwise(method=method, max_doc_chars=args.max_doc_chars)
        report = evaluate(
            collection, Reranker(strategy, backend), depth=args.depth, queries=args.queries, progress=True
        )
        rate = report.usage.calls / report.wall_seconds if report.wall_seconds else 0.0
        rows.append((method, report.metrics["nDCG@10"], rate, report.usage.prompt_tokens / max(report.usage.calls, 1)))
    print(f"SciFact test, first {args.queries} queries, BM25 top {args.depth}, docs cut to {args.max_doc_chars} chars")
    print(f"{'method':<10} {'nDCG@10':>8} {'prompts/s':>10} {'tokens/prompt':>14}")
    for name, ndcg, rate, tokens in rows:
        speed = "" if rate is None else f"{rate:.2f}"
        size = "" if tokens is None else f"{tokens:.0f}"
        print(f"{name:<10} {ndcg:>8.3f} {speed:>10} {size:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
