"""Benchmark: the offline default and hybrid on TREC DL20 (the official BM25 top-100 run), with intervals.

What ``llmrerank eval --data .../trec-dl20-passage --run .../bm25-top100.tsv --strategy query_likelihood
hybrid --depth D`` measures, run in chunks of queries so that a long CPU run keeps what it finished:
after each chunk the per-query results so far are written to ``--out`` (``dl20.json``, ``dl20.md``),
and a rerun with the same ``--out`` skips the chunks already there (resume).

- ``query_likelihood``: the local default, ``Reranker()`` with no key: SmolLM2-135M's log P(query |
  passage) fused with the run's BM25 scores (the backend's ``preferred_fusion``);
- ``hybrid``: the bundled MiniLM bi-encoder keeps 10, query likelihood ranks them (no fusion).

Several ``--depth`` values share one response cache per strategy: the passages scored at depth 20 are
not scored again at depth 100 (their prompts are the same). Queries: the first ``--queries`` judged
ones in ``queries.jsonl`` order. Each strategy's nDCG@10 difference from BM25 on the same queries comes
with a 95% paired-bootstrap interval (:func:`llmrerank.evaluation.paired_difference`).

    OMP_NUM_THREADS=1 nice python benchmarks/dl20.py --depth 20 --out benchmarks/results/dl20-depth20
    OMP_NUM_THREADS=1 nice python benchmarks/dl20.py --depth 20 100 --queries 12 --chunk 3 \\
        --out benchmarks/results/dl20-depth100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmrerank import Hybrid, MemoryCache, Reranker
from llmrerank.evaluation import EvalReport, QueryResult, evaluate, load_beir, paired_difference, read_run
from llmrerank.routing import make_backend
from llmrerank.strategies import make_strategy
from llmrerank.types import Usage

DL20 = Path("shared", "data", "trec-dl20-passage")
SHARED = next(
    (f / DL20 for f in Path(__file__).resolve().parents if (f / DL20 / "corpus.jsonl").is_file()),
    Path(__file__).resolve().parents[2] / DL20,
)
"""The DL20 folder in ``shared/data`` beside the checkout or one of its parents."""


def merged(parts: Sequence[EvalReport]) -> EvalReport:
    """One report over the queries of several (same strategy and depth), means recomputed."""
    per_query: tuple[QueryResult, ...] = tuple(q for p in parts for q in p.per_query)
    names = list(parts[0].metrics)
    means = {n: sum(q.metrics[n] for q in per_query) / len(per_query) for n in names}
    return replace(
        parts[0],
        metrics=means,
        per_query=per_query,
        usage=sum((p.usage for p in parts), Usage()),
        wall_seconds=sum(p.wall_seconds for p in parts),
    )


def markdown(by_depth: dict[int, list[EvalReport]]) -> str:
    """The table: per depth and strategy, nDCG@10, its difference from BM25 [95% CI], P@1, calls and time."""
    head = ["depth", "strategy", "queries", "nDCG@10", "ΔnDCG@10 [95% CI]", "RR", "P@1", "calls/q", "s/q"]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for depth, reports in sorted(by_depth.items()):
        base = reports[0]
        for r in reports:
            n = max(r.queries, 1)
            delta = "baseline" if r is base else str(paired_difference(r, base))
            calls = (r.usage.calls + r.usage.cached_calls) / n
            cells = [str(depth), r.name, str(r.queries), f"{r.metrics['nDCG@10']:.4f}", delta]
            cells += [f"{r.metrics['RR']:.3f}", f"{r.metrics['P@1']:.3f}", f"{calls:.1f}", f"{r.wall_seconds / n:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the measurement; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED), help="the DL20 BEIR folder (default: ../shared/data/...)")
    parser.add_argument("--run", help="first-stage run (default: DATA/bm25-top100.tsv)")
    parser.add_argument("--depth", type=int, nargs="+", default=[20])
    parser.add_argument("--queries", type=int, help="the first N judged queries (default: all 54)")
    parser.add_argument("--strategy", nargs="+", default=["query_likelihood", "hybrid"])
    parser.add_argument("--chunk", type=int, default=6, help="queries per saved chunk (default: 6)")
    parser.add_argument("--backend", default="local", choices=["local", "fake"])
    parser.add_argument("--out", required=True, help="folder for dl20.json, dl20.md and the chunks")
    args = parser.parse_args(argv)

    collection = load_beir(args.data)
    run = read_run(args.run or Path(args.data) / "bm25-top100.tsv")
    ids = list(collection.queries)[: args.queries]
    backend = make_backend(args.backend)
    caches = {name: MemoryCache(maxsize=1_000_000, max_bytes=2**30) for name in args.strategy}
    out = Path(args.out)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts: dict[tuple[int, str], list[EvalReport]] = {}
    chunks = [ids[i : i + args.chunk] for i in range(0, len(ids), args.chunk)]
    for c, chunk in enumerate(chunks):
        for depth in sorted(set(args.depth)):
            for name in ["bm25", *args.strategy]:
                saved = out / "chunks" / f"{depth}-{name}-{c}.json"
                if saved.is_file():
                    parts.setdefault((depth, name), []).append(from_json(json.loads(saved.read_text())))
                    continue
                reranker = None
                if name != "bm25":
                    strategy = Hybrid() if name == "hybrid" else make_strategy(name)
                    reranker = Reranker(strategy, backend, cache=caches[name])
                report = evaluate(
                    collection, reranker, depth=depth, queries=chunk, run=run, with_scores=True, name=name
                )
                saved.write_text(json.dumps(report.to_dict()), encoding="utf-8")
                parts.setdefault((depth, name), []).append(report)
                print(f"chunk {c + 1}/{len(chunks)} depth {depth} {name}: {report.wall_seconds:.0f} s", file=sys.stderr)
        by_depth: dict[int, list[EvalReport]] = {}
        for (depth, _), found in parts.items():
            by_depth.setdefault(depth, []).append(merged(found))
        write(out, by_depth, args, backend, argv, time.perf_counter() - started, len(collection.queries))
    return 0


def from_json(data: dict[str, Any]) -> EvalReport:
    """An :class:`EvalReport` back from :meth:`EvalReport.to_dict` (the fields this benchmark reads)."""
    queries = tuple(
        QueryResult(q["query_id"], q["metrics"], tuple(q["ranking"]), q["seconds"], Usage(**q["usage"]))
        for q in data["per_query"]
    )
    return EvalReport(
        name=data["name"],
        metrics=data["metrics"],
        per_query=queries,
        usage=Usage(**data["usage"]),
        cost=data["cost_usd"],
        latency_p50=data["latency_p50_s"],
        latency_p95=data["latency_p95_s"],
        wall_seconds=data["wall_seconds"],
        depth=data["depth"],
        k=data["k"],
        data=data["data"],
        backend=data["backend"],
        model=data["model"],
        relevance=data["relevance"],
        first_stage=data["first_stage"],
    )


def write(
    out: Path,
    by_depth: dict[int, list[EvalReport]],
    args: argparse.Namespace,
    backend: Any,
    argv: Any,
    secs: float,
    judged: int,
) -> None:
    """Print and write the table so far."""
    table = markdown(by_depth)
    first = next(iter(by_depth.values()))[0]
    note = (
        f"TREC DL20 passage, the first {first.queries} of {judged} judged queries (queries.jsonl order), official BM25 "
        f"top-100 run; trec_eval conventions (RR, P@1: grade >= {first.relevance}); interval: 95% paired bootstrap "
        f"over queries (10,000 resamples, seed 0); backend {args.backend}, model {backend.model}; "
        f"Python {platform.python_version()} on {platform.machine()}, 2 shared CPU cores, nice; "
        f"{time.strftime('%Y-%m-%d')}, {secs:.0f} s this session"
    )
    command = ["python", "benchmarks/dl20.py", *(argv if argv is not None else sys.argv[1:])]
    payload = {
        "command": command,
        "note": note,
        "reports": [
            {**r.to_dict(False), "vs_bm25": paired_difference(r, rs[0]).to_dict()}
            for rs in by_depth.values()
            for r in rs
        ],
    }
    (out / "dl20.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    (out / "dl20.md").write_text(f"{table}\n\n{note}\n\nCommand: `{' '.join(command)}`\n", encoding="utf-8")
    print(f"{table}\n\n{note}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
