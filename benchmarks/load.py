"""Benchmark: throughput of many concurrent reranks on one Reranker, for several ``max_concurrency``.

Each cell fires ``--reranks`` concurrent ``arerank`` calls at one :class:`~llmrerank.Reranker`
(``OpenAIBackend`` through the real SDK) against :class:`~testkit.server.FakeLLMServer`
on loopback, whose replies take ``--delay`` seconds. It prints reranks/s, LLM calls/s, the most
requests the server saw at once and the median / p95 latency of one rerank.

    python benchmarks/load.py                                  # K = 1 4 16 64, listwise and pointwise
    python benchmarks/load.py --k 8 32 --reranks 500 --delay 0.05
    python benchmarks/load.py --nagle        # with Nagle back on: a ~40 ms stall per keep-alive reply
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank import Reranker
from llmrerank.protocol import Prompt
from llmrerank.testing import overlap_judge
from testkit.report import markdown_table, write_json
from testkit.server import FakeLLMServer, ServerRequest

QUERY = "why do dogs bark at night"
DOCS = [
    "The cat sat on the mat.",
    "Dogs bark at night because they hear noises.",
    "Birds sing at dawn.",
    "Night trains run late.",
    "Why do dogs bark? Territory and alarm.",
]


class Responder:
    """Overlap judge after ``delay`` seconds; counts requests in flight."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, request: ServerRequest) -> str:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            return overlap_judge(Prompt(request.system, request.user))
        finally:
            with self._lock:
                self.in_flight -= 1


async def cell(strategy: str, k: int, reranks: int, delay: float) -> dict[str, Any]:
    """One measurement."""
    from llmrerank.backends.openai import OpenAIBackend

    responder = Responder(delay)
    with FakeLLMServer(responder) as srv:
        backend = OpenAIBackend("gpt-load", base_url=srv.base_url, api_key="sk-test", max_retries=0, logprobs=False)
        reranker = Reranker(strategy, backend, max_concurrency=k)
        try:
            await reranker.arerank(QUERY, DOCS)  # warm the client and its connection pool
            srv.clear()
            responder.max_in_flight = 0
            latencies: list[float] = []

            async def one() -> int:
                started = time.perf_counter()
                result = await reranker.arerank(QUERY, DOCS)
                latencies.append(time.perf_counter() - started)
                return result.usage.calls

            started = time.perf_counter()
            calls = sum(await asyncio.gather(*(one() for _ in range(reranks))))
            wall = time.perf_counter() - started
        finally:
            await backend.aclose()
    latencies.sort()
    return {
        "strategy": strategy,
        "k": k,
        "reranks": reranks,
        "calls": calls,
        "delay_s": delay,
        "wall_s": wall,
        "reranks_per_s": reranks / wall,
        "calls_per_s": calls / wall,
        "server_max_in_flight": responder.max_in_flight,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table."""
    columns = ["strategy", "K", "reranks", "calls", "reranks/s", "calls/s", "server max in flight", "p50 ms", "p95 ms"]
    cells = [
        [
            r["strategy"],
            r["k"],
            r["reranks"],
            r["calls"],
            f"{r['reranks_per_s']:.1f}",
            f"{r['calls_per_s']:.1f}",
            r["server_max_in_flight"],
            f"{r['p50_ms']:.0f}",
            f"{r['p95_ms']:.0f}",
        ]
        for r in rows
    ]
    return markdown_table(columns, cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64], help="max_concurrency values")
    parser.add_argument("--strategies", nargs="+", default=["listwise", "pointwise"])
    parser.add_argument("--reranks", type=int, default=200, help="concurrent reranks per cell")
    parser.add_argument("--delay", type=float, default=0.02, help="server reply delay in seconds")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="turn Nagle back on in FakeLLMServer (a ~40 ms stall per keep-alive reply)",
    )
    args = parser.parse_args(argv)
    if args.nagle:
        # What FakeLLMServer did before it set TCP_NODELAY: every keep-alive reply waits ~40 ms.
        from testkit import server

        server._Handler.disable_nagle_algorithm = False
    print(f"{args.reranks} concurrent reranks of {len(DOCS)} documents; server delay {args.delay * 1000:.0f} ms")
    rows = []
    for strategy in args.strategies:
        for k in args.k:
            rows.append(asyncio.run(cell(strategy, k, args.reranks, args.delay)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
