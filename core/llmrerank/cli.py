"""The ``llmrerank`` command: ``eval`` (quality, cost, speed per strategy), ``batch`` (rerank a file), ``demo``.

::

    llmrerank eval --strategy bm25 pointwise listwise --backend local --depth 20 --queries 50 --out runs/local
    llmrerank eval --backend openai --model gpt-4o-mini --strategy listwise pairwise --queries 100
    llmrerank batch rows.jsonl --out runs/batch --backend openai --strategy pointwise --concurrency 16
    llmrerank demo
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .adaptive import DEFAULT_MAX_CONCURRENCY
from .errors import ConfigurationError, LLMRerankError, require
from .routing import BACKENDS, make_backend
from .strategies import STRATEGIES

BASELINES = ("bm25", "none")
STRATEGY_NAMES = tuple(STRATEGIES)


def add_reranker_options(parser: argparse.ArgumentParser, *, batch: bool = False) -> None:
    """The options that build a Reranker: backend, model, listwise window, domain, call bound, prices."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="LLM backend (default: the provider --model names or implies, openai with --base-url, else local"
        + ("; openai or anthropic for their batch engines)" if batch else ", offline)"),
    )
    parser.add_argument(
        "--model",
        help="model name, optionally with its provider: openai:gpt-4.1-mini, anthropic:claude-haiku-4-5 "
        "(default: the backend's own)",
    )
    parser.add_argument("--base-url", help="API base URL for openai/anthropic (an OpenAI-compatible server, a proxy)")
    parser.add_argument("--window", type=int, help="listwise window (default: 20)")
    parser.add_argument("--step", type=int, help="listwise step (default: 10)")
    parser.add_argument("--domain", help="domain instruction: legal, medical, ecommerce or your own sentence")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help=f"most LLM calls in flight over all concurrent reranks (default: {DEFAULT_MAX_CONCURRENCY}; "
        "adapts below it on rate limits)",
    )
    parser.add_argument(
        "--prices", help="JSON file of model -> {input, output} USD per 1M tokens, over the built-in table"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``llmrerank`` command."""
    parser = argparse.ArgumentParser(prog="llmrerank", description="Rerank retrieved documents with LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="{eval,batch,demo}")
    ev = sub.add_parser(
        "eval",
        help="compare reranking strategies on a BEIR collection: quality, LLM calls, tokens, cost, latency",
        description=(
            "BM25 (bm25s) retrieves the top --depth documents for each judged query; each strategy reranks "
            "them; ir-measures scores nDCG@3, nDCG@10, RR@10, P@1 and R@k. The BM25 order is always "
            "reported as the baseline. Prints a table; with --out, writes report.json and plot.png."
        ),
    )
    ev.add_argument(
        "--data", help="BEIR folder (default: $LLMRERANK_DATA, else shared/data/scifact beside the checkout)"
    )
    ev.add_argument("--split", default="test", help="qrels split (default: test)")
    ev.add_argument(
        "--strategy",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="one or more of bm25 (= none), " + ", ".join(STRATEGY_NAMES) + "; comma-separated or repeated "
        "(default: bm25 and the backend's preferred strategy)",
    )
    add_reranker_options(ev)
    ev.add_argument("--depth", type=int, default=20, help="BM25 documents reranked per query (default: 20)")
    ev.add_argument("--queries", type=int, help="evaluate the first N judged queries (default: all)")
    ev.add_argument("--k", type=int, default=10, help="recall cutoff for R@k (default: 10)")
    ev.add_argument("--concurrency", type=int, default=1, help="queries reranked at once (default: 1)")
    ev.add_argument("--out", help="folder for report.json and plot.png")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_batch_parser(sub)
    sub.add_parser("demo", help="a short offline demonstration (arguments go to the demo)", add_help=False)
    return parser


def add_batch_parser(sub: Any) -> None:
    """``llmrerank batch``: its arguments."""
    from .batch import ENGINES

    ba = sub.add_parser(
        "batch",
        help="rerank a JSONL or Parquet file of (query, candidates) rows into results, errors and a TREC run",
        description=(
            'Rows: {"query_id": ..., "query": "...", "candidates": [{"id": ..., "text": "...", "score": 1.2}]}. '
            "Writes OUT/results.jsonl, OUT/errors.jsonl (rows that could not be reranked) and OUT/run.trec. "
            "Rerunning the same command skips the rows already written (resume after Ctrl-C or a crash)."
        ),
    )
    ba.add_argument("input", help="JSONL or Parquet (.parquet) file of rows")
    ba.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    ba.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local (asyncio, default), ray (Ray Data; RAY_ADDRESS for a cluster), openai-batch / anthropic-batch "
        "(the providers' batch APIs at half price; one-round strategies only)",
    )
    ba.add_argument("--strategy", choices=STRATEGY_NAMES, help="strategy (default: the backend's preferred one)")
    add_reranker_options(ba, batch=True)
    ba.add_argument("--top-k", type=int, help="keep the best K candidates of each row (default: all)")
    ba.add_argument("--concurrency", type=int, default=8, help="rows reranked at once (default: 8)")
    ba.add_argument(
        "--on-error",
        choices=("degrade", "raise"),
        default="degrade",
        help="a failed LLM call: degrade (default; the row is written with degraded=true) or raise (the row goes "
        "to errors.jsonl, and --retry-errors tries it again)",
    )
    ba.add_argument("--retry-errors", action="store_true", help="try the rows in errors.jsonl again")
    ba.add_argument("--run-name", help="last column of the TREC run (default: llmrerank-STRATEGY)")
    ba.add_argument("--ray-actors", type=int, help="ray: actors in the pool (default: the cluster's CPUs)")
    ba.add_argument("--poll-interval", type=float, default=30.0, help="provider batch: seconds between checks")
    ba.add_argument("--no-wait", action="store_true", help="provider batch: submit and exit; rerun to collect")
    ba.add_argument("--cancel", action="store_true", help="provider batch: cancel the open batches, keep what ended")
    ba.add_argument("--no-progress", action="store_true", help="no progress bar")


def strategies_from(values: Sequence[str] | None) -> list[str]:
    """Strategy names from ``--strategy`` values; the BM25 baseline always comes first."""
    names = ["bm25"]
    for value in values or ():
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name in BASELINES:
                continue
            if name not in STRATEGY_NAMES:
                raise ConfigurationError(f"unknown strategy {name!r}: use {', '.join(BASELINES + STRATEGY_NAMES)}")
            if name not in names:
                names.append(name)
    return names


def make_strategy_object(name: str, args: argparse.Namespace) -> Any:
    """The strategy ``name`` with the listwise window options applied."""
    from .strategies import make_strategy

    options = {}
    if name == "listwise":
        if args.window is not None:
            options["window"] = args.window
        if args.step is not None:
            options["step"] = args.step
    return make_strategy(name, **options)


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(reports: Sequence[Any]) -> str:
    """The comparison table printed by ``llmrerank eval``."""
    if not reports:
        return ""
    from .pricing import PRICES_AS_OF

    metrics = list(reports[0].metrics)
    base = reports[0].metrics.get("nDCG@10", 0.0)
    head = ["strategy", *metrics, "ΔnDCG@10", "calls/q", "in tok/q", "out tok/q", "USD/1k q", "p50 s", "p95 s"]
    rows = [head]
    for r in reports:
        n = max(r.queries, 1)
        cost = None if r.cost is None else r.cost * 1000 / n
        rows.append(
            [
                r.name,
                *(_num(r.metrics[m]) for m in metrics),
                f"{r.metrics.get('nDCG@10', 0.0) - base:+.3f}",
                f"{r.usage.calls / n:.1f}",
                f"{r.usage.prompt_tokens / n:.0f}",
                f"{r.usage.completion_tokens / n:.0f}",
                _num(cost, 2),
                f"{r.latency_p50:.2f}",
                f"{r.latency_p95:.2f}",
            ]
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    first = reports[0]
    llm = next((r for r in reports if r.backend), None)
    where = ""
    cost = f"USD/1k q estimated, prices as of {PRICES_AS_OF}"
    if llm is not None:
        asked = f" (asked for {llm.requested_model})" if llm.requested_model else ""
        where = f"backend {llm.backend}, model {llm.model}{asked}; "
        if llm.cost is None:
            cost = f"USD/1k q {llm.cost_note}"
    lines.append(f"{first.queries} queries, BM25 depth {first.depth}; {where}{cost}; p50/p95: seconds per query")
    for r in reports:
        if r.degraded:
            reasons = ", ".join(f"{code} {count}" for code, count in sorted(r.degraded_reasons.items()))
            lines.append(
                f"degraded: {r.name} on {r.degraded} of {r.queries} queries ({reasons}); first: {r.first_problem()}"
            )
    return "\n".join(lines)


def plot(reports: Sequence[Any], path: str | Path) -> Path:
    """Quality against LLM calls (or estimated cost) and against latency, one point per strategy."""
    matplotlib: Any = require("matplotlib", "eval")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = any(r.cost for r in reports)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for r in reports:
        n = max(r.queries, 1)
        y = r.metrics.get("nDCG@10", 0.0)
        x_left = (r.cost or 0.0) * 1000 / n if priced else r.usage.calls / n
        for ax, x in ((left, x_left), (right, r.latency_p50)):
            ax.scatter([x], [y], s=40, zorder=3)
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    base = reports[0].metrics.get("nDCG@10", 0.0) if reports else 0.0
    for ax in (left, right):
        ax.axhline(base, linestyle="--", linewidth=0.8, color="grey")
        ax.set_ylabel("nDCG@10")
        ax.grid(alpha=0.3)
    left.set_xlabel("estimated USD per 1k queries" if priced else "LLM calls per query")
    left.set_xscale("symlog", linthresh=1.0)
    left.set_xlim(left=-0.5)
    right.set_xlabel("latency p50 (s per query)")
    if reports:
        r = reports[0]
        fig.suptitle(f"{Path(r.data or '').name or 'collection'}: {r.queries} queries, BM25 top {r.depth}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def run_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``llmrerank eval``."""
    from .evaluation import evaluate as run
    from .evaluation import load_beir
    from .reranker import Reranker

    names = strategies_from(args.strategy)
    collection = load_beir(args.data, args.split)
    backend = None
    if len(names) == 1 and args.strategy is None:
        backend = make_backend(args.backend, args.model, args.base_url)
        names.append(backend.preferred_strategy)
    reports = []
    for name in names:
        reranker = None
        if name != "bm25":
            if backend is None:
                backend = make_backend(args.backend, args.model, args.base_url)
            reranker = Reranker(
                make_strategy_object(name, args),
                backend,
                domain=args.domain,
                max_concurrency=args.max_concurrency,
            )
        reports.append(
            run(
                collection,
                reranker,
                depth=args.depth,
                queries=args.queries,
                k=args.k,
                name=name,
                prices=args.prices,
                concurrency=args.concurrency,
                progress=not args.no_progress,
                with_scores=True,  # BM25 scores for fusion (the local default fuses them)
            )
        )
    table = format_table(reports)
    print(table)
    if args.out:
        from .pricing import PRICES_AS_OF

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {
            "command": ["llmrerank", *argv],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data": str(collection.path),
            "split": args.split,
            "backend": backend.name if backend is not None else args.backend,
            "model": next((r.model for r in reports if r.model), args.model),
            "depth": args.depth,
            "k": args.k,
            "queries": reports[0].queries,
            "cost_note": next((r.cost_note for r in reports if r.backend), f"estimated, prices as of {PRICES_AS_OF}"),
            "table": table,
            "results": [r.to_dict() for r in reports],
        }
        (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        plot(reports, out / "plot.png")
        print(f"wrote {out / 'report.json'} and {out / 'plot.png'}")
    failed = [r.name for r in reports if r.always_degraded]
    if failed:
        print(
            f"llmrerank: error: {', '.join(failed)} degraded on every query: the figures above are the fallback "
            "order's, not a reranker's (see the degraded line and report.json)",
            file=sys.stderr,
        )
        return 1
    return 0


def run_batch_cli(args: argparse.Namespace) -> int:
    """``llmrerank batch``."""
    from .batch import RerankerSpec, run_batch
    from .pricing import PRICES_AS_OF

    backend = args.backend or {"openai-batch": "openai", "anthropic-batch": "anthropic"}.get(args.engine)
    spec = RerankerSpec(
        backend,
        make_strategy_object(args.strategy, args) if args.strategy else None,
        args.model,
        args.base_url,
        {"domain": args.domain, "max_concurrency": args.max_concurrency, "on_error": args.on_error},
    )
    try:
        summary = run_batch(
            args.input,
            args.out,
            spec,
            engine=args.engine,
            top_k=args.top_k,
            concurrency=args.concurrency,
            retry_errors=args.retry_errors,
            run_name=args.run_name,
            progress=not args.no_progress,
            prices=args.prices,
            ray_actors=args.ray_actors,
            poll_interval=args.poll_interval,
            wait=not args.no_wait,
            cancel=args.cancel,
        )
    except KeyboardInterrupt:
        print(f"llmrerank: interrupted; rerun the same command to resume {args.out}", file=sys.stderr)
        return 130
    cost = "n/a" if summary.cost is None else f"~${summary.cost:.4f}"
    print(
        f"{summary.rows} rows: {summary.results} reranked ({summary.degraded} degraded), {summary.errors} errors, "
        f"{summary.skipped} done before, {summary.pending} waiting; {summary.rows_per_second:.1f} rows/s"
    )
    print(
        f"{summary.usage.calls} LLM calls, {summary.usage.prompt_tokens} prompt + {summary.usage.completion_tokens} "
        f"completion tokens, {cost} (estimated, prices as of {PRICES_AS_OF})"
    )
    if summary.pending:
        print(f"provider batches {', '.join(summary.provider_batches)} still running: rerun the same command")
    print(f"wrote {summary.results_path}, {summary.errors_path}, {summary.trec_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmrerank`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        import importlib

        # The demo loads a model; import it only when asked for.
        demo: Any = importlib.import_module(".demo", __package__)
        result = demo.main(args_list[1:])
        return int(result or 0)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "batch":
            return run_batch_cli(args)
        return run_eval(args, args_list)
    except LLMRerankError as exc:
        print(f"llmrerank: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
