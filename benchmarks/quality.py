"""Benchmark 1: ranking quality, BM25 against each llmrerank strategy, on the shared SciFact collection.

Each strategy reranks the BM25 top ``--depth`` of the first N judged test queries and is compared with
BM25 on exactly the same queries. The strategies: ``pointwise``, ``pairwise`` (sort mode),
``listwise`` (window 20, step 10) and ``hybrid`` (the bundled all-MiniLM-L6-v2 bi-encoder keeps half,
the backend's preferred strategy ranks them: pointwise for the local model, listwise for API
models). A slow strategy can run on fewer queries (``pairwise:5``); each query count gets its own
BM25 row. The defaults (BM25 top 10, documents cut to 400 characters, 10 queries, pairwise
on 5) keep the local model under 15 minutes on 2 CPU cores; with an API model ask for more
(``--depth 20 --queries 50 --max-doc-chars 0`` keeps each strategy's own cut).

    python benchmarks/quality.py --out benchmarks/results            # local SmolLM2-135M, offline
    python benchmarks/quality.py --backend openai --model gpt-4o-mini --out runs/openai

The default backend is the local SmolLM2-135M model (CPU); ``--backend fake`` (word overlap, no
model) checks the plumbing in seconds.
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

from llmrerank import BatchScore, Hybrid, Listwise, Pairwise, Pointwise, Reranker, Setwise, Strategy
from llmrerank.cli import make_backend
from llmrerank.evaluation import EvalReport, evaluate, load_beir

DEFAULT_STRATEGIES = ["pointwise", "listwise", "hybrid", "pairwise:5"]
"""Sized for the local model on 2 CPU cores: 6.5 minutes with the defaults below (limit: 15)."""


def make_strategy(name: str, depth: int, max_doc_chars: int | None = None, preferred: str = "listwise") -> Strategy:
    """The strategy measured under ``name``; ``max_doc_chars`` (0 or None: each strategy's own) cuts documents.

    Hybrid ranks the survivors with the backend's ``preferred`` strategy (pointwise for the local model).
    """
    clip: dict[str, Any] = {"max_doc_chars": max_doc_chars} if max_doc_chars else {}
    inner = Pointwise(**clip) if preferred == "pointwise" else Listwise(**clip)
    strategies: dict[str, Any] = {
        "pointwise": lambda: Pointwise(**clip),
        "pairwise": lambda: Pairwise(mode="sort", **clip),
        "listwise": lambda: Listwise(**clip),
        "hybrid": lambda: Hybrid(cross_encoder=None, keep=max(2, depth // 2), llm=inner),
        "batch_score": lambda: BatchScore(**clip),
        "setwise": lambda: Setwise(**clip),
    }
    if name not in strategies:
        raise SystemExit(f"unknown strategy {name!r}: use {', '.join(strategies)}")
    return strategies[name]()


def parse_strategies(values: Sequence[str], default_queries: int) -> dict[int, list[str]]:
    """``name`` or ``name:queries`` -> {queries: [names]}, in the order given."""
    groups: dict[int, list[str]] = {}
    for value in values:
        name, _, count = value.partition(":")
        groups.setdefault(int(count) if count else default_queries, []).append(name)
    return groups


def row(r: EvalReport) -> dict[str, Any]:
    """The figures of one report that the table shows."""
    n = max(r.queries, 1)
    return {
        "strategy": r.name,
        "queries": r.queries,
        "nDCG@10": r.metrics["nDCG@10"],
        "MRR@10": r.metrics["RR@10"],
        "P@1": r.metrics["P@1"],
        "calls/q": r.usage.calls / n,
        "tokens/q": r.usage.total_tokens / n,
        "s/q": r.wall_seconds / n,
        "degraded": r.degraded,
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table in markdown; ΔnDCG@10 against the BM25 row of the same query count."""
    base = {r["queries"]: r["nDCG@10"] for r in rows if r["strategy"] == "bm25"}
    head = ["strategy", "queries", "nDCG@10", "ΔnDCG@10", "MRR@10", "P@1", "calls/q", "tokens/q", "s/q", "degraded"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        delta = r["nDCG@10"] - base.get(r["queries"], r["nDCG@10"])
        cells = [r["strategy"], str(r["queries"]), f"{r['nDCG@10']:.3f}", f"{delta:+.3f}", f"{r['MRR@10']:.3f}"]
        cells += [f"{r['P@1']:.3f}", f"{r['calls/q']:.1f}", f"{r['tokens/q']:.0f}", f"{r['s/q']:.2f}"]
        lines.append("| " + " | ".join([*cells, str(r["degraded"])]) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], title: str, path: Path) -> None:
    """nDCG@10 against LLM calls per query, one point per strategy (and per query count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for r in rows:
        label = f"{r['strategy']} ({r['queries']} q)"
        ax.scatter([r["calls/q"]], [r["nDCG@10"]], s=40, zorder=3, marker="s" if r["strategy"] == "bm25" else "o")
        ax.annotate(label, (r["calls/q"], r["nDCG@10"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=-0.3)
    ax.set_xlabel("LLM calls per query")
    ax.set_ylabel("nDCG@10")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; with ``--out``, write quality.json, quality.md, quality.png."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="BEIR folder (default: shared/data/scifact beside the checkout)")
    parser.add_argument("--backend", default="local", choices=["local", "openai", "anthropic", "fake"])
    parser.add_argument("--model")
    parser.add_argument("--base-url")
    parser.add_argument("--depth", type=int, default=10, help="BM25 documents reranked per query (default: 10)")
    parser.add_argument("--queries", type=int, default=10, help="queries for strategies given without :N (default: 10)")
    parser.add_argument("--max-doc-chars", type=int, default=400, help="cut documents to N characters (default: 400)")
    parser.add_argument("--strategy", nargs="+", default=DEFAULT_STRATEGIES, help="name or name:queries")
    parser.add_argument("--out", help="folder for quality.json, quality.md and quality.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    collection = load_beir(args.data)
    backend = make_backend(args.backend, args.model, args.base_url)
    reports: list[EvalReport] = []
    started = time.perf_counter()
    for count, names in parse_strategies(args.strategy, args.queries).items():
        common: dict[str, Any] = {"depth": args.depth, "queries": count, "progress": not args.no_progress}
        reports.append(evaluate(collection, None, **common))
        for name in names:
            strategy = make_strategy(name, args.depth, args.max_doc_chars, backend.preferred_strategy)
            reranker = Reranker(strategy, backend)
            reports.append(evaluate(collection, reranker, name=name, **common))
            print(f"{name}: {reports[-1].wall_seconds:.0f} s", file=sys.stderr, flush=True)
    rows = [row(r) for r in reports]
    table = markdown(rows)
    machine = f"Python {platform.python_version()} on {platform.machine()}"
    note = (
        f"SciFact test, BM25 top {args.depth}; documents cut to {args.max_doc_chars or 'the default'} characters; "
        f"hybrid: MiniLM keeps {max(2, args.depth // 2)}, {backend.preferred_strategy} ranks them; "
        f"backend {args.backend}, model {backend.model}; {machine}; "
        f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s in all"
    )
    print(f"{table}\n\n{note}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        command = ["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]
        payload = {"command": command, "note": note, "rows": rows, "reports": [r.to_dict(False) for r in reports]}
        (out / "quality.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        (out / "quality.md").write_text(f"{table}\n\n{note}\n\nCommand: `{' '.join(command)}`\n", encoding="utf-8")
        plot(rows, f"SciFact, BM25 top {args.depth} reranked by {backend.model}", out / "quality.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
