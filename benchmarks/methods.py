"""Issue 23's methods against what they improve on, on DL20 with a judge of known position bias.

TREC DL20 passage (the 54 judged queries, graded qrels 0-3, the official BM25 top-100 from
``shared/data/trec-dl20-passage``). The judge is :class:`~testkit.server.BiasedJudge`
behind one :class:`~testkit.server.FakeLLMServer` on 127.0.0.1, reached through the real
OpenAI SDK: it sees each passage's qrels grade (unjudged: 0), plus ``--bias`` for the passage shown
first of a window falling linearly to 0 for the last, plus seeded Gaussian noise (``--noise``).
``bias 0, noise 0`` is the oracle: it ranks by the qrels themselves.

- ``consistency``: the BM25 top ``--depth`` (one window of 20) ranked by ``Listwise`` once and with
  ``self_consistency`` 3 and 5 (Borda count over seeded shuffles), per judge setting.
- ``topdown``: the BM25 top 100 for a top 10, ``Listwise(window=20, step=10)`` against
  ``TopDown(window=20, top_k=10)``: calls, sequential rounds (counted by stepping the plan), tokens
  and wall time per query with ``--latency`` per call (the oracle), then nDCG@10 on the biased judge.

nDCG@10 (ir-measures, full qrels) with a 95 % bootstrap interval over the queries (2000 resamples,
seeded), and the paired difference against the row each method improves on with its interval.

    python benchmarks/methods.py consistency --bias 0 1 2 --noise 0.5
    python benchmarks/methods.py topdown --latency 0.2 --bias 1 --noise 0.5
    python benchmarks/methods.py diversity --bias 1 --noise 0.5

- ``diversity``: listwise over the BM25 top ``--depth`` (biased judge), then ``dedup`` and ``MMR``
  with the bundled all-MiniLM-L6-v2: duplicates dropped and nDCG@10 before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank import Listwise, Reranker, Strategy, TopDown
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.evaluation import EvalReport, evaluate_reranking, load_beir
from llmrerank.protocol import Completion, Context
from llmrerank.types import Document
from testkit.server import BiasedJudge, FakeLLMServer

DL20 = Path("shared", "data", "trec-dl20-passage")


def default_data() -> Path:
    """``$LLMRERANK_DL20``, else the first ``shared/data/trec-dl20-passage`` above the cwd or this checkout."""
    if os.environ.get("LLMRERANK_DL20"):
        return Path(os.environ["LLMRERANK_DL20"])
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / DL20 / "bm25-top100.tsv").is_file():
                return folder / DL20
    return DL20


def key(text: str) -> str:
    """A passage as the judge finds it again in a prompt (whitespace and control characters aside)."""
    return re.sub(r"\s+", " ", text).strip()[:200]


class Dl20:
    """DL20's queries, BM25 top-100 candidates and graded qrels."""

    def __init__(self, path: Path, queries: int | None) -> None:
        self.collection = load_beir(path)
        runs: dict[str, list[str]] = {}
        with open(path / "bm25-top100.tsv", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                runs.setdefault(row["query-id"], []).append(row["corpus-id"])
        ids = [q for q in self.collection.queries if q in runs][:queries]
        self.ids = ids
        self.runs = runs
        self.grades = {
            (key(self.collection.queries[q]), key(self.collection.documents[d])): float(g)
            for q in ids
            for d, g in self.collection.qrels[q].items()
            if d in self.collection.documents
        }

    def relevance(self, query: str, text: str) -> float:
        return self.grades.get((key(query), key(text)), 0.0)

    def tasks(self, depth: int, shuffled: bool = False) -> list[dict[str, Any]]:
        """Each query's BM25 top ``depth``, in BM25 order or shuffled (seeded by the query id)."""
        docs = self.collection.documents
        out = []
        for q in self.ids:
            hits = self.runs[q][:depth]
            if shuffled:
                random.Random(q).shuffle(hits)
            out.append(
                {
                    "id": q,
                    "query": self.collection.queries[q],
                    "documents": [{"id": d, "content": docs[d]} for d in hits],
                }
            )
        return out


def ndcg(report: EvalReport) -> list[float]:
    return [r.metrics["nDCG@10"] for r in report.per_query]


def interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def rounds(strategy: Strategy, judge: BiasedJudge, task: dict[str, Any]) -> int:
    """Sequential steps of ``strategy``'s plan for one query (the plan driven by hand with ``judge``)."""
    docs = [Document(i, d["content"]) for i, d in enumerate(task["documents"])]
    plan = strategy.plan(task["query"], docs, Context(top_k=10))
    steps = 0
    try:
        step = next(plan)
        while True:
            steps += 1
            step = plan.send([Completion(judge.answer(p)) for p in step])  # type: ignore[union-attr]
    except StopIteration:
        return steps


def run_eval(
    data: Dl20,
    server: FakeLLMServer,
    judge: BiasedJudge,
    strategy: Strategy | None,
    tasks: list[dict[str, Any]],
    name: str,
    concurrency: int,
) -> EvalReport:
    server.responder = judge
    reranker = None
    if strategy is not None:
        reranker = Reranker(strategy, OpenAIBackend("fake-model", base_url=server.base_url, api_key="benchmark"))
    truth = {t["id"]: dict(data.collection.qrels[t["id"]]) for t in tasks}
    return evaluate_reranking(tasks, truth, reranker, name=name, concurrency=concurrency)


def line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def quality_cells(report: EvalReport, base: list[float] | None) -> list[str]:
    values = ndcg(report)
    low, high = interval(values)
    cells = [f"{statistics.fmean(values):.3f} [{low:.3f}, {high:.3f}]"]
    if base is None:
        cells.append("")
    else:
        diff = [a - b for a, b in zip(values, base, strict=True)]
        dl, dh = interval(diff)
        cells.append(f"{statistics.fmean(diff):+.3f} [{dl:+.3f}, {dh:+.3f}]")
    n = max(report.queries, 1)
    cells += [f"{report.usage.calls / n:.1f}", f"{report.usage.prompt_tokens / n:.0f}"]
    cells.append(str(sum(r.degraded for r in report.per_query)))
    return cells


def consistency(args: argparse.Namespace, data: Dl20, server: FakeLLMServer, rows: list[dict[str, Any]]) -> None:
    tasks = data.tasks(args.depth, args.order == "shuffled")
    order = "in BM25 order" if args.order == "bm25" else "shuffled"
    print(f"\nSelf-consistency: DL20, {len(tasks)} queries, BM25 top {args.depth} {order}, noise {args.noise}\n")
    print(
        line(["judge bias", "reranker", "nDCG@10 [95% CI]", "Δ vs k=1 [95% CI]", "calls/q", "prompt tok/q", "degraded"])
    )
    print(line(["---:", "---", "---:", "---:", "---:", "---:", "---:"]))
    base = run_eval(data, server, BiasedJudge(), None, tasks, "bm25", 1)
    print(line(["-", "BM25", *quality_cells(base, None)]))
    for bias in args.bias:
        judge = BiasedJudge(data.relevance, bias=bias, noise=args.noise, seed=args.seed, max_grade=3)
        single: list[float] | None = None
        for k in args.k:
            report = run_eval(
                data, server, judge, Listwise(self_consistency=k), tasks, f"listwise k={k}", args.concurrency
            )
            cells = quality_cells(report, single)
            print(line([bias, f"listwise, self_consistency={k}", *cells]))
            rows.append(
                {
                    "part": "consistency",
                    "order": args.order,
                    "bias": bias,
                    "k": k,
                    "ndcg": statistics.fmean(ndcg(report)),
                }
            )
            single = single or ndcg(report)


def topdown(args: argparse.Namespace, data: Dl20, server: FakeLLMServer, rows: list[dict[str, Any]]) -> None:
    tasks = data.tasks(100)
    strategies: dict[str, Callable[[], Strategy]] = {
        "listwise (window 20, step 10)": lambda: Listwise(window=20, step=10),
        "topdown (window 20, top_k 10)": lambda: TopDown(window=20, top_k=10),
        "topdown, self_consistency=3": lambda: TopDown(window=20, top_k=10, self_consistency=3),
    }
    oracle = BiasedJudge(data.relevance, bias=0.0, max_grade=3)
    print(f"\nTop-down partitioning, cost: DL20, {len(tasks)} queries, BM25 top 100, top 10, {args.latency}s a call\n")
    print(line(["reranker", "nDCG@10 (oracle)", "calls/q", "rounds/q", "prompt tok/q", "completion tok/q", "p50 s/q"]))
    print(line(["---", "---:", "---:", "---:", "---:", "---:", "---:"]))
    server.latency = args.latency
    for name, make in strategies.items():
        report = run_eval(data, server, oracle, make(), tasks, name, args.concurrency)
        n = max(report.queries, 1)
        steps = statistics.fmean(rounds(make(), oracle, t) for t in tasks)
        print(
            line(
                [
                    name,
                    f"{statistics.fmean(ndcg(report)):.3f}",
                    f"{report.usage.calls / n:.1f}",
                    f"{steps:.1f}",
                    f"{report.usage.prompt_tokens / n:.0f}",
                    f"{report.usage.completion_tokens / n:.0f}",
                    f"{report.latency_p50:.2f}",
                ]
            )
        )
        rows.append({"part": "topdown cost", "reranker": name, "calls": report.usage.calls / n, "rounds": steps})
    server.latency = 0.0
    print(f"\nTop-down partitioning, quality: the biased judge (noise {args.noise})\n")
    print(
        line(
            [
                "judge bias",
                "reranker",
                "nDCG@10 [95% CI]",
                "Δ vs listwise [95% CI]",
                "calls/q",
                "prompt tok/q",
                "degraded",
            ]
        )
    )
    print(line(["---:", "---", "---:", "---:", "---:", "---:", "---:"]))
    for bias in args.bias:
        judge = BiasedJudge(data.relevance, bias=bias, noise=args.noise, seed=args.seed, max_grade=3)
        sliding: list[float] | None = None
        for name, make in strategies.items():
            report = run_eval(data, server, judge, make(), tasks, name, args.concurrency)
            print(line([bias, name, *quality_cells(report, sliding)]))
            rows.append(
                {"part": "topdown quality", "bias": bias, "reranker": name, "ndcg": statistics.fmean(ndcg(report))}
            )
            sliding = sliding or ndcg(report)


class CachedEmbedder:
    """The bundled all-MiniLM-L6-v2, each passage encoded once over all rows."""

    def __init__(self) -> None:
        from llmrerank.diversity import default_embedder

        self.model = default_embedder()
        self.seen: dict[str, Any] = {}

    def encode(self, texts: Sequence[str]) -> list[Any]:
        new = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if new:
            self.seen.update(zip(new, self.model.encode(new), strict=True))
        return [self.seen[t] for t in texts]


def diversity(args: argparse.Namespace, data: Dl20, server: FakeLLMServer, rows: list[dict[str, Any]]) -> None:
    from llmrerank import MMR, Dedup

    tasks = data.tasks(args.depth)
    embedder = CachedEmbedder()
    judge = BiasedJudge(data.relevance, bias=args.bias[0], noise=args.noise, seed=args.seed, max_grade=3)
    settings: dict[str, dict[str, Any]] = {
        "listwise": {},
        "+ dedup 0.95": {"dedup": Dedup(0.95, embedder=embedder)},
        "+ dedup 0.90": {"dedup": Dedup(0.90, embedder=embedder)},
        "+ MMR 0.7": {"diversity": MMR(0.7, embedder=embedder)},
        "+ dedup 0.95 + MMR 0.7": {"dedup": Dedup(0.95, embedder=embedder), "diversity": MMR(0.7, embedder=embedder)},
    }
    print(
        f"\nDiversity after listwise: DL20, {len(tasks)} queries, BM25 top {args.depth}, judge bias {args.bias[0]}, "
        f"noise {args.noise}; all-MiniLM-L6-v2 cosine\n"
    )
    print(line(["after the rerank", "nDCG@10 [95% CI]", "Δ [95% CI]", "dropped/q", "queries with a drop"]))
    print(line(["---", "---:", "---:", "---:", "---:"]))
    server.responder = judge
    base: list[float] | None = None
    for name, options in settings.items():
        backend = OpenAIBackend("fake-model", base_url=server.base_url, api_key="benchmark")
        reranker = Reranker(Listwise(), backend, **options)
        truth = {t["id"]: dict(data.collection.qrels[t["id"]]) for t in tasks}
        dropped: list[int] = []

        def rerank(query: str, docs: Any, reranker: Reranker = reranker, dropped: list[int] = dropped) -> Any:
            result = reranker.rerank(query, docs)
            dropped.append(len(result.dropped))
            return result

        report = evaluate_reranking(tasks, truth, rerank, name=name)
        values = ndcg(report)
        low, high = interval(values)
        delta = ""
        if base is not None:
            diff = [a - b for a, b in zip(values, base, strict=True)]
            dl, dh = interval(diff)
            delta = f"{statistics.fmean(diff):+.3f} [{dl:+.3f}, {dh:+.3f}]"
        cells = [f"{statistics.fmean(values):.3f} [{low:.3f}, {high:.3f}]", delta]
        cells += [f"{statistics.fmean(dropped):.2f}", str(sum(d > 0 for d in dropped))]
        print(line([name, *cells]))
        rows.append({"part": "diversity", "setting": name, "ndcg": statistics.fmean(values), "dropped": sum(dropped)})
        base = base or values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("consistency", "topdown", "diversity", "all"))
    parser.add_argument(
        "--data", type=Path, help="DL20 folder (default: $LLMRERANK_DL20 or shared/data/trec-dl20-passage)"
    )
    parser.add_argument("--queries", type=int, help="the first N judged queries (default: all 54)")
    parser.add_argument("--depth", type=int, default=20, help="consistency: BM25 depth (default: 20, one window)")
    parser.add_argument("--order", choices=("bm25", "shuffled"), default="bm25", help="consistency: candidate order")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 5], help="self_consistency values")
    parser.add_argument("--bias", type=float, nargs="+", default=[1.0], help="judge position bias, in grades")
    parser.add_argument("--noise", type=float, default=0.5, help="judge noise deviation, in grades")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.2, help="topdown cost: seconds a call")
    parser.add_argument("--concurrency", type=int, default=4, help="queries at once")
    parser.add_argument("--out", type=Path, help="folder for methods.json")
    args = parser.parse_args(argv)
    args.data = args.data or default_data()
    data = Dl20(args.data, args.queries)
    rows: list[dict[str, Any]] = []
    with FakeLLMServer() as server:
        if args.part in ("consistency", "all"):
            consistency(args, data, server, rows)
        if args.part in ("topdown", "all"):
            topdown(args, data, server, rows)
        if args.part == "diversity":  # needs sentence-transformers and the bundled model
            diversity(args, data, server, rows)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {**vars(args), "data": str(args.data), "out": str(args.out)}
        (args.out / f"methods-{args.part}-{args.order}.json").write_text(
            json.dumps({"args": settings, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
