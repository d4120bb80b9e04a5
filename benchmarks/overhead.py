"""Benchmark 3: library overhead, the time a rerank spends outside the LLM calls.

A FakeBackend with zero delay answers every prompt at once with a fixed, valid answer, so what is
left of the wall time after subtracting the time spent inside the backend (``usage.llm_seconds``)
is llmrerank's own work: input normalisation, prompt building, the driver, parsing, results.

    python benchmarks/overhead.py                               # table on stdout
    python benchmarks/overhead.py --out benchmarks/results      # also overhead.json and overhead.md
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmark_support import machine, make_parser, publish

from llmrerank import BatchScore, Hybrid, Listwise, Pairwise, Pointwise, Reranker, Setwise, Strategy
from llmrerank.protocol import Prompt
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
    if "0 (unrelated) to 10" in prompt.user:  # batch scoring
        return "\n".join(f"[{i}] {i % 11}" for i in range(1, count + 1))
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
        "batch_score": BatchScore(),
        "setwise": Setwise(),
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


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table in markdown."""
    head = ["strategy", "docs", "api", "calls", "wall µs", "in LLM µs", "overhead µs", "µs/call"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [r["strategy"], str(r["docs"]), f"`{r['api']}`", str(r["calls"])]
        cells += [f"{r[k]:.0f}" for k in ("wall_us", "llm_us", "overhead_us")] + [f"{r['overhead_per_call_us']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; with ``--out``, write overhead.json and overhead.md."""
    parser = make_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100], help="documents per rerank")
    parser.add_argument("--repeats", type=int, default=0, help="reranks per cell (default: by size)")
    parser.add_argument("--out", help="folder for overhead.json and overhead.md")
    args = parser.parse_args(argv)
    note = (
        f"median of repeated reranks (pairwise: a tenth as many); FakeBackend with zero delay; "
        f"overhead = wall - time inside the backend; {machine(cores=True)}; {time.strftime('%Y-%m-%d')}"
    )
    rows = []
    for n in args.sizes:
        for name, strategy in strategies().items():
            for sync in (False, True):
                repeats = args.repeats or max(15, 6000 // n)
                if name in ("pairwise", "setwise") and not args.repeats:
                    repeats = max(3, repeats // 10)
                figures = measure(strategy, n, repeats, sync=sync)
                api = "rerank()" if sync else "await arerank()"
                rows.append({"strategy": name, "docs": n, "api": api, "repeats": repeats, **figures})
    publish("overhead", markdown(rows), note, args.out, argv, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
