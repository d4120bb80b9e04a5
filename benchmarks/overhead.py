"""Benchmark 3: library overhead, the time a rerank spends outside the LLM calls.

A FakeBackend with zero delay answers every prompt at once with a fixed, valid answer, so what is
left of the wall time after subtracting the time spent inside the backend (``usage.llm_seconds``)
is llmrerank's own work: input normalisation, prompt building, the driver, parsing, results.

    python benchmarks/overhead.py                       # table on stdout
    python benchmarks/overhead.py --json benchmarks/results/overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llmrerank import Hybrid, Listwise, Pairwise, Pointwise, Reranker, Strategy
from llmrerank.backends.base import Prompt
from llmrerank.testing import FakeBackend

WORDS = [
    "retrieval",
    "ranking",
    "language",
    "model",
    "query",
    "document",
    "relevance",
    "score",
    "evidence",
    "claim",
    "study",
    "result",
]


def documents(n: int) -> list[str]:
    """``n`` distinct documents of about 150 words."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(150)) + f" doc {i}" for i in range(n)]


def answer(prompt: Prompt) -> str:
    """A valid answer for every built-in prompt, at no cost."""
    count = prompt.user.count('<document id="')
    if count == 1:
        return "7"
    if '<document id="A">' in prompt.user:
        return "A"
    return " > ".join(f"[{i}]" for i in range(count, 0, -1))


class StubScorer:
    """A prefilter that costs nothing (the cross-encoder's own time is not llmrerank's)."""

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [float(len(doc) % 97) for _, doc in pairs]


def strategies() -> dict[str, Strategy]:
    """The strategies measured, with their default options."""
    return {
        "pointwise": Pointwise(),
        "listwise": Listwise(),
        "pairwise": Pairwise(),
        "hybrid": Hybrid(cross_encoder=StubScorer(), keep=10),
    }


def measure(strategy: Strategy, n: int, repeats: int, *, sync: bool) -> dict[str, float]:
    """Median wall, LLM and overhead time of one rerank of ``n`` documents, in microseconds."""
    docs = documents(n)
    reranker = Reranker(strategy, FakeBackend(respond=answer), max_concurrency=64)
    walls, llms, calls = [], [], 0

    async def many() -> None:
        nonlocal calls
        for _ in range(repeats):
            started = time.perf_counter()
            result = await reranker.arerank("which ranking model is best", docs)
            walls.append(time.perf_counter() - started)
            llms.append(result.usage.llm_seconds)
            calls = result.usage.calls

    if sync:
        for _ in range(repeats):
            started = time.perf_counter()
            result = reranker.rerank("which ranking model is best", docs)
            walls.append(time.perf_counter() - started)
            llms.append(result.usage.llm_seconds)
            calls = result.usage.calls
    else:
        asyncio.run(many())
    overheads = [w - x for w, x in zip(walls, llms, strict=True)]
    overhead = statistics.median(overheads) * 1e6
    return {
        "calls": calls,
        "wall_us": statistics.median(walls) * 1e6,
        "llm_us": statistics.median(llms) * 1e6,
        "overhead_us": overhead,
        "overhead_per_call_us": overhead / calls if calls else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100], help="documents per rerank")
    parser.add_argument("--repeats", type=int, default=0, help="reranks per cell (default: by size)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        for name, strategy in strategies().items():
            for sync in (False, True):
                repeats = args.repeats or max(5, 2000 // n)
                if name == "pairwise":
                    repeats = max(3, repeats // 10)
                figures = measure(strategy, n, repeats, sync=sync)
                rows.append({"strategy": name, "docs": n, "api": "rerank()" if sync else "await arerank()", **figures})
    head = (
        f"{'strategy':<10} {'docs':>4}  {'api':<16} {'calls':>5} {'wall µs':>10} {'in LLM µs':>10}"
        f" {'overhead µs':>11} {'µs/call':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['strategy']:<10} {r['docs']:>4}  {r['api']:<16} {r['calls']:>5} {r['wall_us']:>10.0f} "
            f"{r['llm_us']:>10.0f} {r['overhead_us']:>11.0f} {r['overhead_per_call_us']:>8.1f}"
        )
    machine = f"Python {platform.python_version()} on {platform.machine()}, {platform.processor() or platform.system()}"
    print(f"median of repeated reranks; FakeBackend with zero delay; {machine}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
