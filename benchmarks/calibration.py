"""Calibrated probability of relevance: ECE and reliability on the report half, before and after.

Each strategy reranks the BM25 top ``--depth`` of the first ``--queries`` SciFact test queries of the
TUNING half; every document's raw score is paired with its qrels judgment (``llmrerank.calibrate``)
and a map is fitted (isotonic and Platt). The same is gathered on the first ``--queries`` of the
REPORT half, where the expected calibration error (10 equal bins) and the Brier score are measured:
before (the raw score read as a probability the obvious way: a 0-10 rating over 10, a first-token or
Borda score as it is, a log-likelihood ratio through the logistic function) and after each map.
Intervals: 95 % bootstrap over the report queries (1000 resamples). With ``--out``, a reliability
plot (``calibration.png``) and ``calibration.json``.

    OMP_NUM_THREADS=1 nice python benchmarks/calibration.py --backend local --queries 40 --out benchmarks/results
    python benchmarks/calibration.py --backend loopback --queries 150
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank import Pointwise, QueryLikelihood, Reranker, Strategy
from llmrerank.calibrate import Pairs, gather_pairs, pick_queries
from llmrerank.calibration import expected_calibration_error, fit_calibration, reliability
from llmrerank.evaluation import load_beir
from llmrerank.runner import run_blocking

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "query_likelihood": lambda: QueryLikelihood(max_doc_chars=800),
    "pointwise_expected": lambda: Pointwise(method="expected"),
}


def naive(score: float, kind: str) -> float:
    """The raw score read as a probability without any fit."""
    if kind in ("relevance", "logprob"):
        return min(1.0, max(0.0, score / 10))
    if kind in ("first_token", "borda", "win_rate", "probability"):
        return score
    return 1 / (1 + math.exp(-max(-50.0, min(50.0, score))))


def brier(probabilities: Sequence[float], labels: Sequence[bool]) -> float:
    return sum((p - (1.0 if y else 0.0)) ** 2 for p, y in zip(probabilities, labels, strict=True)) / len(labels)


def by_query(pairs: Pairs, values: Sequence[float]) -> list[tuple[list[float], list[bool]]]:
    out, start = [], 0
    for size in pairs.sizes:
        out.append((list(values[start : start + size]), pairs.labels[start : start + size]))
        start += size
    return out


def with_interval(pairs: Pairs, values: Sequence[float], metric: Callable[..., float]) -> str:
    """``metric`` over all pairs, with a 95 % bootstrap interval over queries."""
    groups = by_query(pairs, values)
    rng = random.Random(0)
    draws = []
    for _ in range(1000):
        pick = [groups[rng.randrange(len(groups))] for _ in groups]
        p = [v for g in pick for v in g[0]]
        y = [v for g in pick for v in g[1]]
        if p:
            draws.append(metric(p, y))
    draws.sort()
    low, high = draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1]
    return f"{metric(list(values), pairs.labels):.3f} [{low:.3f}, {high:.3f}]"


def make_backend(kind: str) -> Any:
    if kind == "local":
        from llmrerank.backends.local import LocalBackend

        return LocalBackend()
    from testkit.server import loopback_backend

    return loopback_backend()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="BEIR folder (default: $LLMRERANK_DATA or shared/data/scifact)")
    parser.add_argument("--backend", choices=("local", "loopback"), default="local")
    parser.add_argument("--strategy", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--queries", type=int, default=40, help="queries of each half (default: 40)")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    collection = load_beir(args.data)
    tuning = pick_queries(collection, "tuning", args.queries)
    report = pick_queries(collection, "report", args.queries)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[str, list[tuple[float, float, int]]]]] = {}
    print(
        f"SciFact, BM25 top {args.depth}; fitted on {len(tuning)} tuning queries, "
        f"measured on {len(report)} report queries"
    )
    print("| strategy | map | pairs (report) | relevant | ECE [95% CI] | Brier [95% CI] |")
    print("|---|---|---:|---:|---:|---:|")
    if args.backend == "loopback":
        os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    started = time.perf_counter()
    for name in args.strategy:
        context = make_backend(args.backend)
        backend = context.__enter__() if hasattr(context, "__enter__") else context
        try:
            reranker = Reranker(STRATEGIES[name](), backend, fusion=None)
            fit = run_blocking(
                gather_pairs(reranker, collection, tuning, depth=args.depth, concurrency=args.concurrency)
            )
            test = run_blocking(
                gather_pairs(reranker, collection, report, depth=args.depth, concurrency=args.concurrency)
            )
        finally:
            if hasattr(context, "__exit__"):
                context.__exit__(None, None, None)
        maps = {
            method: fit_calibration(
                fit.scores, fit.labels, model=backend.model, strategy=name, score_kind=fit.score_kind, method=method
            )
            for method in ("isotonic", "platt")
        }
        readings = {
            "raw (" + ("score / 10" if fit.score_kind in ("relevance", "logprob") else "logistic") + ")": [
                naive(s, test.score_kind) for s in test.scores
            ]
        }
        readings.update({m: [c.probability(s) for s in test.scores] for m, c in maps.items()})
        curves[name] = []
        for label, probabilities in readings.items():
            ece = with_interval(test, probabilities, expected_calibration_error)
            score = with_interval(test, probabilities, brier)
            print(f"| {name} | {label} | {len(test.scores)} | {sum(test.labels)} | {ece} | {score} |")
            rows.append({"strategy": name, "map": label, "ece": ece, "brier": score, "pairs": len(test.scores)})
            curves[name].append((label, reliability(probabilities, test.labels)))
        if args.out:
            write(args, rows, curves)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]], curves: dict[str, Any]) -> None:
    """calibration.json and the reliability plot, calibration.png (rewritten after each strategy)."""
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "calibration.json").write_text(
            json.dumps({"args": {**vars(args), "out": str(args.out)}, "rows": rows}, indent=1)
        )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.5), squeeze=False)
        for ax, (name, lines) in zip(axes[0], curves.items(), strict=True):
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
            for label, table in lines:
                ax.plot([t[0] for t in table], [t[1] for t in table], marker="o", label=label)
            ax.set(
                title=f"{name} ({args.backend}), report half", xlabel="predicted P(relevant)", ylabel="share relevant"
            )
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out / "calibration.png", dpi=110)
        plt.close(fig)
        print(f"wrote {args.out / 'calibration.json'} and {args.out / 'calibration.png'}")


if __name__ == "__main__":
    sys.exit(main())
