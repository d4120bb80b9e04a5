"""Benchmark 1: ranking quality, BM25 against each llmrerank strategy, on the shared SciFact collection.

Every strategy reranks the BM25 top ``--depth`` of the first N judged test queries; each table
compares it with BM25 on exactly the same queries. Slow strategies can run on fewer queries
(``listwise:20``); each query count gets its own table and BM25 row.

    python benchmarks/quality.py --depth 20 --strategy pointwise:100 listwise:30 \\
        --json benchmarks/results/quality.json --plot benchmarks/results/quality.png

The default backend is the local SmolLM2-135M model (offline, CPU); ``--backend openai --model
gpt-4o-mini`` (with OPENAI_API_KEY) measures a real API model the same way.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmrerank import Reranker
from llmrerank.cli import format_table, make_backend, make_strategy_object
from llmrerank.evaluation import EvalReport, evaluate, load_beir


def parse_strategies(values: Sequence[str], default_queries: int) -> dict[int, list[str]]:
    """``name`` or ``name:queries`` -> {queries: [names]}, in the order given."""
    groups: dict[int, list[str]] = {}
    for value in values:
        name, _, count = value.partition(":")
        groups.setdefault(int(count) if count else default_queries, []).append(name)
    return groups


def plot(reports: Sequence[EvalReport], path: Path) -> None:
    """nDCG@10 gain over BM25 (same queries) against LLM calls and latency per query."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {r.queries: r.metrics["nDCG@10"] for r in reports if r.name == "bm25"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    for r in reports:
        if r.name == "bm25":
            continue
        gain = r.metrics["nDCG@10"] - base[r.queries]
        label = f"{r.name} ({r.queries} q)"
        for ax, x in ((left, r.calls_per_query), (right, r.latency_p50)):
            ax.scatter([x], [gain], s=40, zorder=3)
            ax.annotate(label, (x, gain), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for ax in (left, right):
        ax.axhline(0.0, linestyle="--", linewidth=0.8, color="grey")
        ax.set_ylabel("nDCG@10 minus BM25's")
        ax.grid(alpha=0.3)
    left.set_xlabel("LLM calls per query")
    right.set_xlabel("latency p50 (s per query)")
    model = next((r.model for r in reports if r.model), "")
    depth = reports[0].depth if reports else 0
    fig.suptitle(f"SciFact, BM25 top {depth} reranked by {model}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print one table per query count."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="BEIR folder (default: shared/data/scifact beside the checkout)")
    parser.add_argument("--backend", default="local", choices=["local", "openai", "anthropic", "fake"])
    parser.add_argument("--model")
    parser.add_argument("--base-url")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--queries", type=int, default=50, help="queries for strategies given without :N")
    parser.add_argument("--strategy", nargs="+", default=["pointwise", "listwise"], help="name or name:queries")
    parser.add_argument("--window", type=int)
    parser.add_argument("--step", type=int)
    parser.add_argument("--json", help="write the reports (without per-query rankings) to this file")
    parser.add_argument("--plot", help="write the plot to this PNG")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    collection = load_beir(args.data)
    backend = make_backend(args.backend, args.model, args.base_url)
    all_reports: list[EvalReport] = []
    tables = []
    started = time.perf_counter()
    for count, names in parse_strategies(args.strategy, args.queries).items():
        common: dict[str, Any] = {"depth": args.depth, "queries": count, "progress": not args.no_progress}
        reports = [evaluate(collection, None, **common)]
        for name in names:
            reranker = Reranker(make_strategy_object(name, args), backend)
            reports.append(evaluate(collection, reranker, name=name, **common))
        table = format_table(reports)
        print(table + "\n", flush=True)
        tables.append(table)
        all_reports += reports
    machine = f"{platform.machine()}, Python {platform.python_version()}"
    print(f"total {time.perf_counter() - started:.0f} s on {machine}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "command": ["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])],
            "machine": machine,
            "tables": tables,
            "reports": [r.to_dict(per_query=False) for r in all_reports],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    if args.plot:
        plot(all_reports, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
