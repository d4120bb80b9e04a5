"""The ``llmrerank`` command: ``eval`` (quality, cost, speed per strategy), ``batch`` (rerank a file),
``calibrate`` (fit scores to P(relevant)), ``demo``.

::

    llmrerank eval --strategy bm25 pointwise listwise --backend local --depth 20 --queries 50 --out runs/local
    llmrerank eval --backend openai --model gpt-4o-mini --strategy listwise pairwise --queries 100
    llmrerank eval --data ../shared/data/trec-dl20-passage --run ../shared/data/trec-dl20-passage/bm25-top100.tsv \
        --model openai:gpt-4o-mini --strategy listwise --depth 20 100
    llmrerank batch rows.jsonl --out runs/batch --backend openai --strategy pointwise --concurrency 16
    llmrerank serve --port 8080 --backend openai --model gpt-4o-mini --api-key secret
    llmrerank demo
    llmrerank doctor
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adaptive import DEFAULT_MAX_CONCURRENCY
from .errors import ConfigurationError, LLMRerankError, require
from .routing import BACKENDS, backend_kind, make_backend, make_strategy_object
from .strategies import STRATEGIES

if TYPE_CHECKING:
    from .cache import MemoryCache
    from .evaluation import Collection, EvalReport, Run
    from .serve.config import ServeConfig

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
    parser.add_argument(
        "--api-key",
        help="API key for openai/anthropic (default: OPENAI_API_KEY / ANTHROPIC_API_KEY; a --base-url on this "
        "machine or a private network needs none)",
    )
    parser.add_argument("--window", type=int, help="listwise and topdown window (default: 20)")
    parser.add_argument("--step", type=int, help="listwise step (default: 10)")
    parser.add_argument(
        "--self-consistency",
        type=int,
        metavar="K",
        help="listwise and topdown: rank each window K times in seeded shuffled orders, Borda count (default: 1)",
    )
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
    sub = parser.add_subparsers(dest="command", metavar="{eval,batch,serve,calibrate,demo,doctor}")
    add_eval_parser(sub)
    add_batch_parser(sub)
    add_serve_parser(sub)
    add_calibrate_parser(sub)
    sub.add_parser("demo", help="a short offline demonstration (arguments go to the demo)", add_help=False)
    sub.add_parser(
        "doctor",
        help="what Reranker() will use here and what is missing, with the install lines (exit 1: it cannot rerank)",
    )
    return parser


def add_eval_parser(sub: Any) -> None:
    """``llmrerank eval``: its arguments (what is evaluated here, what is measured in :func:`add_eval_measures`)."""
    ev = sub.add_parser(
        "eval",
        help="compare reranking strategies on a BEIR collection: quality, LLM calls, tokens, cost, latency",
        description=(
            "BM25 (bm25s) retrieves the top --depth documents for each judged query, or --run gives them; "
            "each strategy reranks them; ir-measures scores nDCG@3, nDCG@10, RR@10, RR, P@1 and R@k with "
            "trec_eval's conventions. The first stage's order is always reported as the baseline, and each "
            "strategy's nDCG@10 difference from it with a 95% paired-bootstrap interval. Prints a table "
            "per depth (and published figures for the setup, when known); with --out, writes report.json "
            "and plot.png (and depth.png for several depths)."
        ),
    )
    ev.add_argument(
        "--data",
        help="BEIR folder (default: $LLMRERANK_DATA, else shared/data/scifact beside the checkout, else the "
        "checkout's SciFact slice, saying so)",
    )
    ev.add_argument(
        "--run",
        metavar="FILE",
        help="first-stage run instead of BM25: TREC format 'qid Q0 docid rank score tag' or TSV "
        "'query-id corpus-id rank score'; documents ordered by score as trec_eval does",
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
    ev.add_argument(
        "--depth",
        type=int,
        nargs="+",
        default=[20],
        help="first-stage documents reranked per query; several (10 20 50 100) give a depth curve, the LLM "
        "calls of one depth answering the same prompts at the next from a cache (default: 20)",
    )
    add_eval_measures(ev)


def add_eval_measures(ev: argparse.ArgumentParser) -> None:
    """``llmrerank eval``'s arguments after ``--depth``: the queries and measures, the steps after the
    rerank (calibration, dedup, MMR) and the output."""
    ev.add_argument("--queries", type=int, help="evaluate the first N judged queries (default: all)")
    ev.add_argument("--k", type=int, default=10, help="recall cutoff for R@k (default: 10)")
    ev.add_argument(
        "--relevance",
        type=int,
        metavar="GRADE",
        help="lowest grade RR, P and R count relevant (default: the collection's convention, 2 on TREC DL's "
        "0-3 grades, else 1)",
    )
    ev.add_argument("--concurrency", type=int, default=1, help="queries reranked at once (default: 1)")
    ev.add_argument("--calibration", help="calibration file (llmrerank calibrate): scores as P(relevant)")
    ev.add_argument("--min-probability", type=float, help="with --calibration: drop documents below it")
    ev.add_argument("--dedup", type=float, help="drop near-duplicates at this embedding cosine (e.g. 0.95)")
    ev.add_argument("--mmr", type=float, metavar="LAMBDA", help="reorder by maximal marginal relevance (e.g. 0.7)")
    ev.add_argument("--out", help="folder for report.json and plot.png")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    ba.add_argument("input", nargs="?", help="JSONL or Parquet (.parquet) file of rows (or --run with --data)")
    ba.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    ba.add_argument(
        "--run",
        metavar="FILE",
        help="a first-stage run (TREC 'qid Q0 docid rank score tag' or TSV 'query-id corpus-id rank score') "
        "instead of INPUT: with --data, converted to OUT/input.jsonl (trec_eval's order, the run's scores) "
        "and reranked; OUT/run.trec is then a run trec_eval reads",
    )
    ba.add_argument("--data", help="with --run: the BEIR folder holding the queries' and documents' texts")
    ba.add_argument("--depth", type=int, help="with --run: rerank each query's top N documents (default: all)")
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


def add_serve_parser(sub: Any) -> None:
    """``llmrerank serve``: its arguments."""
    sv = sub.add_parser(
        "serve",
        help="serve reranking over HTTP: Cohere /v1/rerank and /v2/rerank, Jina, TEI /rerank",
        description=(
            "A request's model is a strategy name (" + ", ".join(STRATEGY_NAMES) + "), default (the backend's "
            "preferred strategy) or a preset of --config. The LLM comes from --backend/--model/--base-url and "
            "OPENAI_* / ANTHROPIC_* as for eval; --api-key is this service's own key, which clients send."
        ),
        # The service's --api-key replaces any LLM --api-key the shared reranker options may define.
        conflict_handler="resolve",
    )
    add_reranker_options(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    sv.add_argument("--config", help="TOML file of [server] settings and [presets.NAME] tables")
    sv.add_argument(
        "--api-key",
        help="this service's key: clients send Authorization: Bearer KEY (also $LLMRERANK_SERVE_API_KEY; "
        "none: no auth). The LLM's own key comes from OPENAI_API_KEY / ANTHROPIC_API_KEY or --llm-api-key",
    )
    sv.add_argument("--api-key-file", help="file of service keys, one a line")
    sv.add_argument("--llm-api-key", help="the upstream LLM's key (default: OPENAI_API_KEY / ANTHROPIC_API_KEY)")
    sv.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    sv.add_argument(
        "--grace-period", type=float, default=30.0, help="seconds to finish requests in flight on SIGTERM (default: 30)"
    )
    sv.add_argument("--max-documents", type=int, help="documents per request (default: 1000; 413 past it)")
    sv.add_argument("--max-bytes", type=int, help="bytes per request body (default: 5 MiB; 413 past it)")
    sv.add_argument("--max-in-flight", type=int, help="reranks at once per worker (default: 64; 429 past it)")
    sv.add_argument(
        "--on-error",
        choices=("degrade", "degrade_all", "raise"),
        help="a failed LLM call: degrade (default; a 200 that says so) or raise (502/503)",
    )
    sv.add_argument("--cache", help="response cache: memory, a folder, or redis://... (default: none)")
    sv.add_argument("--cors-origin", action="append", help="allow this browser origin (repeatable; default: CORS off)")
    sv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="default: info")
    sv.add_argument("--log-text", action="store_true", help="put queries in the access log (default: never)")


def run_serve_cli(args: argparse.Namespace) -> int:
    """``llmrerank serve``."""
    from .serve.app import configure_logging, create_app

    if args.llm_api_key:
        kind, _ = backend_kind(args.backend, args.model, args.base_url)
        os.environ["ANTHROPIC_API_KEY" if kind == "anthropic" else "OPENAI_API_KEY"] = args.llm_api_key
    config = serve_config(args)
    configure_logging(args.log_level)
    app = create_app(config)
    app.state.service.backend()  # a bad --backend/--model fails here, before the port opens
    if not config.api_keys:
        print("llmrerank serve: no --api-key: every request is accepted", file=sys.stderr)
    run_uvicorn(app, config, args)
    return 0


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The :class:`~llmrerank.serve.ServeConfig` of ``llmrerank serve``'s flags over its ``--config`` file."""
    import dataclasses

    from .serve.config import ServeConfig, load_config, read_api_keys

    base = ServeConfig(
        backend=args.backend,
        model=args.model,
        base_url=args.base_url,
        max_concurrency=args.max_concurrency,
        prices=args.prices,
    )
    config = load_config(args.config, base)
    given = {
        "max_documents": args.max_documents,
        "max_bytes": args.max_bytes,
        "max_in_flight": args.max_in_flight,
        "on_error": args.on_error,
        "cache": args.cache,
        "cors_origins": tuple(args.cors_origin) if args.cors_origin else None,
        "log_text": args.log_text or None,
    }
    keys = read_api_keys(args.api_key, args.api_key_file)
    config = dataclasses.replace(config, api_keys=keys, **{k: v for k, v in given.items() if v is not None})
    if args.domain or args.window or args.step:
        from .serve.app import Service

        shared = {"domain": args.domain, "window": args.window, "step": args.step}
        presets = {
            name: dataclasses.replace(p, **{k: v for k, v in shared.items() if v is not None})
            for name, p in Service(config).presets.items()
            if name not in config.presets
        }
        config = dataclasses.replace(config, presets={**presets, **config.presets})
    return config


def run_uvicorn(app: Any, config: ServeConfig, args: argparse.Namespace) -> None:
    """Serve ``app`` with uvicorn until it stops: in this process, or in ``--workers`` processes that
    build it again from ``config``."""
    from .serve.app import LOG_LEVEL_ENV, SETTINGS_ENV, settings_json
    from .serve.runner import _uvicorn

    uvicorn = _uvicorn()
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": False,  # llmrerank.serve.access writes one JSON line per request instead
        "timeout_graceful_shutdown": args.grace_period,
    }
    if args.workers > 1:
        os.environ[SETTINGS_ENV] = settings_json(config)
        os.environ[LOG_LEVEL_ENV] = args.log_level
        uvicorn.run("llmrerank.serve.app:app_from_environment", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(app, **options)


def add_calibrate_parser(sub: Any) -> None:
    """``llmrerank calibrate``: fit a strategy's raw score to P(relevant) on judged queries."""
    ca = sub.add_parser(
        "calibrate",
        help="fit a map from a strategy's raw score to P(relevant) on judged queries (for Reranker(calibration=...))",
        description=(
            "Reranks the judged queries' candidates (BM25's top --depth, or a --run file's) with --strategy "
            "and --model, pairs each document's raw score with its qrels judgment, fits a monotone map "
            "(isotonic or Platt) and saves it in --out, keyed by model and strategy. By default only the "
            "tuning half of the queries is used, so the report half stays for measuring."
        ),
    )
    ca.add_argument("--data", help="BEIR folder (default: $LLMRERANK_DATA, else shared/data/scifact)")
    ca.add_argument("--split", default="test", help="qrels split (default: test)")
    ca.add_argument("--run", help="candidates per query: a TREC run file, or qid docid rank score columns")
    ca.add_argument("--strategy", choices=STRATEGY_NAMES, help="strategy (default: the backend's preferred one)")
    add_reranker_options(ca)
    ca.add_argument("--method", choices=("isotonic", "platt"), default="isotonic", help="the map (default: isotonic)")
    ca.add_argument("--half", choices=("tuning", "report", "all"), default="tuning", help="queries (default: tuning)")
    ca.add_argument("--queries", type=int, help="the first N queries of the half (default: all)")
    ca.add_argument("--depth", type=int, default=20, help="candidates reranked per query (default: 20)")
    ca.add_argument("--relevant", type=int, default=1, help="lowest qrels grade counted relevant (default: 1)")
    ca.add_argument("--concurrency", type=int, default=4, help="queries reranked at once (default: 4)")
    ca.add_argument("--out", default="calibration.json", help="calibration file, added to (default: calibration.json)")


def run_calibrate(args: argparse.Namespace) -> int:
    """``llmrerank calibrate``."""
    from .calibrate import gather_pairs, pick_queries, read_run
    from .calibration import expected_calibration_error, fit_calibration, save_calibration
    from .evaluation import load_beir
    from .reranker import Reranker
    from .runner import run_blocking

    collection = load_beir(args.data, args.split)
    backend = make_backend(args.backend, args.model, args.base_url, args.api_key)
    name = args.strategy or backend.preferred_strategy
    reranker = Reranker(make_strategy_object(name, args), backend, domain=args.domain, fusion=None)
    ids = pick_queries(collection, args.half, args.queries)
    run = read_run(args.run) if args.run else None
    pairs = run_blocking(
        gather_pairs(
            reranker, collection, ids, depth=args.depth, run=run, relevant=args.relevant, concurrency=args.concurrency
        )
    )
    fitted_on = {
        "data": str(collection.path),
        "split": args.split,
        "half": args.half,
        "queries": pairs.queries,
        "depth": args.depth,
        "run": args.run,
        "relevant_grade": args.relevant,
    }
    calibration = fit_calibration(
        pairs.scores,
        pairs.labels,
        model=backend.model,
        strategy=reranker.strategy.name,
        score_kind=pairs.score_kind,
        method=args.method,
        fitted_on=fitted_on,
    )
    path = save_calibration(calibration, args.out)
    ece = expected_calibration_error([calibration.probability(s) for s in pairs.scores], pairs.labels)
    print(
        f"{calibration.method} map for {calibration.key} ({pairs.score_kind} scores): {len(pairs.scores)} "
        f"documents of {pairs.queries} queries, {calibration.positives} relevant; ECE on them {ece:.3f}"
    )
    if pairs.degraded:
        print(f"llmrerank: {pairs.degraded} of {pairs.queries} reranks degraded (their scored documents count)")
    print(f"wrote {path}: Reranker(..., calibration={str(path)!r}, min_probability=0.5)")
    return 0


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


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def differences(reports: Sequence[Any]) -> list[Any]:
    """Each report's nDCG@10 difference from the first (the baseline), with its paired-bootstrap interval."""
    from .evaluation import paired_difference

    return [paired_difference(r, reports[0]) for r in reports] if reports else []


def format_table(reports: Sequence[Any]) -> str:
    """The comparison table printed by ``llmrerank eval`` (one depth)."""
    if not reports:
        return ""
    metrics = list(reports[0].metrics)
    head = ["strategy", *metrics, "ΔnDCG@10 [95% CI]", "calls/q", "in tok/q", "out tok/q", "USD/1k q", "p50 s", "p95 s"]
    rows = [head]
    for r, d in zip(reports, differences(reports), strict=True):
        rows.append(_table_row(r, d, metrics, r is reports[0]))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, *_table_notes(reports)])


def _table_row(r: EvalReport, d: Any, metrics: Sequence[str], baseline: bool) -> list[str]:
    """One strategy's cells in :func:`format_table`: its metrics, its difference ``d`` from the
    baseline, and its calls, tokens, cost and latency per query."""
    n = max(r.queries, 1)
    cost = None if r.cost is None else r.cost * 1000 / n
    return [
        r.name,
        *(_num(r.metrics[m], 4) for m in metrics),
        "baseline" if baseline else str(d),
        f"{r.usage.calls / n:.1f}",
        f"{r.usage.prompt_tokens / n:.0f}",
        f"{r.usage.completion_tokens / n:.0f}",
        _num(cost, 2),
        f"{r.latency_p50:.2f}",
        f"{r.latency_p95:.2f}",
    ]


def _table_notes(reports: Sequence[EvalReport]) -> list[str]:
    """The lines under :func:`format_table`'s table: the setup, the conventions, each degraded strategy."""
    from .pricing import PRICES_AS_OF

    first = reports[0]
    llm = next((r for r in reports if r.backend), None)
    where = ""
    cost = f"USD/1k q estimated, prices as of {PRICES_AS_OF}"
    if llm is not None:
        asked = f" (asked for {llm.requested_model})" if llm.requested_model else ""
        where = f"backend {llm.backend}, model {llm.model}{asked}; "
        if llm.cost is None:
            cost = f"USD/1k q {llm.cost_note}"
    stage = "BM25" if first.first_stage == "bm25" else f"run {first.first_stage.removeprefix('run:')}"
    cached = sum(r.usage.cached_calls for r in reports)
    reused = f"; {cached} more calls answered from the cache (not counted in calls/q)" if cached else ""
    lines = [
        f"{Path(first.data or '').name or 'input'}: {first.queries} queries, {stage} depth {first.depth}; "
        f"{where}{cost}; p50/p95: seconds per query{reused}",
        f"trec_eval conventions: nDCG linear gains over all judged documents; RR, P, R count grade >= "
        f"{first.relevance} relevant; Δ: mean per-query difference from the baseline with a 95% paired "
        "bootstrap interval (10,000 resamples of the queries, seed 0)",
    ]
    for r in reports:
        if r.degraded:
            reasons = ", ".join(f"{code} {count}" for code, count in sorted(r.degraded_reasons.items()))
            lines.append(
                f"degraded: {r.name} on {r.degraded} of {r.queries} queries ({reasons}); first: {r.first_problem()}"
            )
    return lines


def published_rows(data: str | None, depth: int) -> list[Any]:
    """The published figures for the collection at ``data`` and ``depth`` (:mod:`llmrerank.published`)."""
    from .published import collection_key, published_for

    return published_for(collection_key(data), depth)


def format_published(rows: Sequence[Any], depth: int) -> str:
    """Published figures as lines under the table, labelled as such; "" when there are none."""
    from .published import LABEL

    if not rows:
        return ""
    lines = [f"nDCG@10 {LABEL} (all judged queries, first stage top {depth}):"]
    width = max(len(f.method) for f in rows)
    for f in rows:
        lines.append(f"  {f.method:<{width}}  {f.figure():>11}  {f.collection}; {f.source}")
    return "\n".join(lines)


def depth_table(by_depth: Mapping[int, Sequence[Any]]) -> str:
    """nDCG@10 (with its interval) and LLM calls per query of each strategy at each depth."""
    depths = sorted(by_depth)
    names = [r.name for r in by_depth[depths[0]]]
    head = ["strategy", *(f"depth {d}" for d in depths)]
    rows = [head]
    for i, name in enumerate(names):
        cells = [name]
        for d in depths:
            reports = by_depth[d]
            r, diff = reports[i], differences(reports)[i]
            calls = (r.usage.calls + r.usage.cached_calls) / max(r.queries, 1)
            delta = "" if i == 0 else f" {diff}"
            cells.append(f"{r.metrics['nDCG@10']:.4f}{delta}, {calls:.1f} calls/q")
        rows.append(cells)
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        "nDCG@10, its difference from the baseline at that depth [95% CI], and LLM calls per query a cold run "
        "makes (cache hits from shallower depths included)"
    )
    return "\n".join(lines)


def plot_depths(by_depth: Mapping[int, Sequence[Any]], path: str | Path) -> Path:
    """nDCG@10 and LLM calls per query (estimated USD per 1k queries when priced) against depth."""
    matplotlib: Any = require("matplotlib", "eval")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted(by_depth)
    names = [r.name for r in by_depth[depths[0]]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for i, name in enumerate(names):
        reports = [by_depth[d][i] for d in depths]
        color = f"C{i % 10}"  # one colour per strategy in both panels
        left.plot(depths, [r.metrics.get("nDCG@10", 0.0) for r in reports], marker="o", label=name, color=color)
        if i:
            calls = [(r.usage.calls + r.usage.cached_calls) / max(r.queries, 1) for r in reports]
            right.plot(depths, calls, marker="o", label=name, color=color)
    left.set_ylabel("nDCG@10")
    right.set_ylabel("LLM calls per query (cold run)")
    for ax in (left, right):
        ax.set_xlabel("depth (first-stage documents reranked)")
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    first = by_depth[depths[0]][0]
    fig.suptitle(f"{Path(first.data or '').name or 'collection'}: {first.queries} queries", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


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
        stage = "BM25" if r.first_stage == "bm25" else r.first_stage.removeprefix("run:")
        fig.suptitle(
            f"{Path(r.data or '').name or 'collection'}: {r.queries} queries, {stage} top {r.depth}", fontsize=10
        )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def after_rerank(args: argparse.Namespace) -> dict[str, Any]:
    """The Reranker options of ``--calibration``, ``--min-probability``, ``--dedup`` and ``--mmr``, as given."""
    from .diversity import MMR

    options: dict[str, Any] = {}
    if args.calibration is not None:
        options["calibration"] = args.calibration
    if args.min_probability is not None:
        options["min_probability"] = args.min_probability
    if args.dedup is not None:
        options["dedup"] = args.dedup
    if args.mmr is not None:
        options["diversity"] = MMR(lambda_=args.mmr)
    return options


def run_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``llmrerank eval``."""
    from .evaluation import read_run

    names = strategies_from(args.strategy)
    collection = eval_collection(args)
    first_stage = read_run(args.run) if args.run else None
    depths = sorted(set(args.depth))
    if depths[0] < 1:
        raise ConfigurationError("--depth must be >= 1")
    evaluation = _Evaluation(args, collection, first_stage)
    if len(names) == 1 and args.strategy is None:
        names.append(evaluation.backend().preferred_strategy)
    by_depth = evaluation.run(names, depths)
    table = eval_tables(by_depth, str(collection.path))
    print(table)
    reports = [r for depth in depths for r in by_depth[depth]]
    if args.out:
        written = write_eval_report(args, argv, collection, evaluation.backend_name(), by_depth, table)
        print(f"wrote {', '.join(map(str, written))}")
    at = (lambda r: f" (depth {r.depth})") if len(depths) > 1 else (lambda r: "")
    failed = [f"{r.name}{at(r)}" for r in reports if r.always_degraded]
    if failed:
        print(
            f"llmrerank: error: {', '.join(failed)} degraded on every query: the figures above are the fallback "
            "order's, not a reranker's (see the degraded line and report.json)",
            file=sys.stderr,
        )
        return 1
    return 0


def eval_collection(args: argparse.Namespace) -> Collection:
    """``--data`` loaded (by default the collection found, or the checkout's slice, saying so on stderr)."""
    from .evaluation import default_data_or_slice, load_beir

    data = args.data
    if data is None:
        data, note = default_data_or_slice()
        if note:
            print(f"llmrerank: {note}", file=sys.stderr)
    return load_beir(data, args.split)


class _Evaluation:
    """``llmrerank eval``'s runs: each strategy at each depth, with one LLM backend built on first use
    (a run of the baseline alone builds none)."""

    def __init__(self, args: argparse.Namespace, collection: Collection, first_stage: Run | None) -> None:
        self.args = args
        self.collection = collection
        self.first_stage = first_stage
        self._backend: Any = None

    def backend(self) -> Any:
        """The LLM backend of ``--backend``/``--model``/``--base-url``/``--api-key``, built once."""
        if self._backend is None:
            args = self.args
            self._backend = make_backend(args.backend, args.model, args.base_url, args.api_key)
        return self._backend

    def backend_name(self) -> str | None:
        """The backend's name if one was built, else ``--backend`` as given."""
        return self._backend.name if self._backend is not None else self.args.backend

    def run(self, names: Sequence[str], depths: Sequence[int]) -> dict[int, list[EvalReport]]:
        """Each strategy's report at each depth, in the order of ``names``."""
        from .cache import MemoryCache

        # One cache per strategy over the depths: a prompt asked at depth 20 is answered again at 50 for free.
        caches = {name: MemoryCache(maxsize=1_000_000, max_bytes=2**30) for name in names} if len(depths) > 1 else {}
        return {depth: [self.report(name, depth, caches.get(name)) for name in names] for depth in depths}

    def report(self, name: str, depth: int, cache: MemoryCache | None) -> EvalReport:
        """The report of strategy ``name`` (``bm25``: the first stage's own order) at ``depth``."""
        from .evaluation import evaluate
        from .reranker import Reranker

        args = self.args
        reranker = None
        if name != "bm25":
            reranker = Reranker(
                make_strategy_object(name, args),
                self.backend(),
                domain=args.domain,
                max_concurrency=args.max_concurrency,
                cache=cache,
                **after_rerank(args),
            )
        return evaluate(
            self.collection,
            reranker,
            depth=depth,
            queries=args.queries,
            k=args.k,
            name=None if reranker is None and self.first_stage is not None else name,
            prices=args.prices,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            with_scores=True,  # first-stage scores for fusion (the local default fuses them)
            run=self.first_stage,
            relevance=args.relevance,
        )


def eval_tables(by_depth: Mapping[int, Sequence[EvalReport]], data: str) -> str:
    """What ``llmrerank eval`` prints: a table per depth with the published figures under it, then
    the depth table when there are several depths."""
    tables = []
    for depth in sorted(by_depth):
        tables.append(format_table(by_depth[depth]))
        published = format_published(published_rows(data, depth), depth)
        if published:
            tables.append(published)
    if len(by_depth) > 1:
        tables.append(depth_table(by_depth))
    return "\n\n".join(tables)


def write_eval_report(
    args: argparse.Namespace,
    argv: Sequence[str],
    collection: Collection,
    backend: str | None,
    by_depth: Mapping[int, Sequence[EvalReport]],
    table: str,
) -> list[Path]:
    """``--out``'s report.json and plot.png (and depth.png for several depths); the paths written."""
    from .pricing import PRICES_AS_OF
    from .published import LABEL

    depths = sorted(by_depth)
    reports = [r for depth in depths for r in by_depth[depth]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": ["llmrerank", *argv],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": str(collection.path),
        "split": args.split,
        "first_stage": reports[0].first_stage,
        "relevance": reports[0].relevance,
        "backend": backend,
        "model": next((r.model for r in reports if r.model), args.model),
        "depth": depths[0] if len(depths) == 1 else depths,
        "k": args.k,
        "queries": reports[0].queries,
        "cost_note": next((r.cost_note for r in reports if r.backend), f"estimated, prices as of {PRICES_AS_OF}"),
        "interval": "95% paired bootstrap over queries (10,000 resamples, seed 0) of the nDCG@10 difference "
        "from the baseline (the first-stage order at the same depth)",
        "table": table,
        "results": [
            {**r.to_dict(), "vs_baseline": d.to_dict()}
            for depth in depths
            for r, d in zip(by_depth[depth], differences(by_depth[depth]), strict=True)
        ],
        "published": [
            {**asdict(f), "label": LABEL}
            for depth in depths
            for f in published_rows(str(collection.path), depth)
            if f.depth == depth or depth == depths[0]
        ],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    plot(by_depth[depths[-1]], out / "plot.png")
    written = [out / "report.json", out / "plot.png"]
    if len(depths) > 1:
        written.append(plot_depths(by_depth, out / "depth.png"))
    return written


def batch_input(args: argparse.Namespace) -> str:
    """The rows file of ``llmrerank batch``: INPUT, or ``--run`` with ``--data`` converted to
    ``OUT/input.jsonl`` (written once: a rerun resumes on the same rows)."""
    if args.run is None:
        if args.data is not None or args.depth is not None:
            raise ConfigurationError("--data and --depth go with --run")
        if args.input is None:
            raise ConfigurationError("give an INPUT file of rows, or --run FILE --data DIR")
        return str(args.input)
    if args.input is not None:
        raise ConfigurationError("give either INPUT or --run, not both")
    if args.data is None:
        raise ConfigurationError("--run needs --data: the BEIR folder with the queries' and documents' texts")
    if args.depth is not None and args.depth < 1:
        raise ConfigurationError("--depth must be >= 1")
    rows_file = Path(args.out) / "input.jsonl"
    if not rows_file.is_file():
        from .evaluation import load_beir, run_rows

        rows = run_rows(args.run, load_beir(args.data), depth=args.depth)
        rows_file.parent.mkdir(parents=True, exist_ok=True)
        partial = rows_file.with_suffix(".jsonl.partial")
        with partial.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        partial.replace(rows_file)
        print(f"wrote {len(rows)} rows from {args.run} to {rows_file}", file=sys.stderr)
    return str(rows_file)


def run_batch_cli(args: argparse.Namespace) -> int:
    """``llmrerank batch``."""
    from .batch import RerankerSpec, run_batch
    from .pricing import PRICES_AS_OF

    source = batch_input(args)
    backend = args.backend or {"openai-batch": "openai", "anthropic-batch": "anthropic"}.get(args.engine)
    spec = RerankerSpec(
        backend,
        make_strategy_object(args.strategy, args) if args.strategy else None,
        args.model,
        args.base_url,
        {"domain": args.domain, "max_concurrency": args.max_concurrency, "on_error": args.on_error},
        api_key=args.api_key,
    )
    try:
        summary = run_batch(
            source,
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
    if summary.cost is None:
        cost = f"cost {summary.cost_note or 'n/a'}"
    elif summary.cost_note.startswith("estimated"):
        cost = f"~${summary.cost:.4f} (estimated, prices as of {PRICES_AS_OF})"
    else:  # a backend on this machine: nothing to estimate
        cost = f"cost n/a ({summary.cost_note})"
    print(
        f"{summary.rows} rows: {summary.results} reranked ({summary.degraded} degraded), {summary.errors} errors, "
        f"{summary.skipped} done before, {summary.pending} waiting; {summary.rows_per_second:.1f} rows/s"
    )
    print(
        f"{summary.usage.calls} LLM calls, {summary.usage.prompt_tokens} prompt + {summary.usage.completion_tokens} "
        f"completion tokens, {cost}"
    )
    if summary.pending:
        print(f"provider batches {', '.join(summary.provider_batches)} still running: rerun the same command")
    print(f"wrote {summary.results_path}, {summary.errors_path}, {summary.trec_path}")
    return 0


@contextmanager
def quiet_libraries(quiet: bool) -> Iterator[None]:
    """``--no-progress`` for the libraries a backend loads too: no "Loading weights" bar from
    transformers, no download bars from huggingface_hub (transformers reads the setting when it is
    imported, which the local backend does later; if it already is, its flag is switched off).
    Both come back as they were afterwards."""
    if not quiet:
        yield
        return
    hub = "HF_HUB_DISABLE_PROGRESS_BARS"
    saved = os.environ.get(hub)
    before = sys.modules.get("transformers.utils.logging")
    was_enabled = before is not None and before.is_progress_bar_enabled()
    os.environ[hub] = "1"
    if before is not None:
        before.disable_progress_bar()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(hub, None)
        else:
            os.environ[hub] = saved
        after = sys.modules.get("transformers.utils.logging")
        if after is not None and (was_enabled or (before is None and saved is None)):
            with warnings.catch_warnings():
                # huggingface_hub read the variable when it was imported inside this block and warns
                # that it "has priority"; the bars of later calls are what this restores.
                warnings.simplefilter("ignore", UserWarning)
                after.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmrerank`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    with quiet_libraries("--no-progress" in args_list):
        return _main(args_list)


def _main(args_list: list[str]) -> int:
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
    if args.command == "doctor":
        from .doctor import main as doctor

        return doctor()
    try:
        if args.command == "batch":
            return run_batch_cli(args)
        if args.command == "serve":
            return run_serve_cli(args)
        if args.command == "calibrate":
            return run_calibrate(args)
        return run_eval(args, args_list)
    except LLMRerankError as exc:
        print(f"llmrerank: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
