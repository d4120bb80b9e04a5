"""One round of calls, and adaptive concurrency against a server that admits only N requests at once.

Part 1 (``rounds``): pointwise and hybrid over 20 documents with default settings, through the real
OpenAI SDK against :class:`~testkit.server.FakeLLMServer` on 127.0.0.1 (in a process of
its own) answering after ``--latency`` seconds; ``wall / latency`` is the median wall time of one
rerank over one call's latency (1.0: every call in one round), and over the wall time of a rerank
that makes one call (the listwise row: the server's latency plus the client's own time for one
request, the floor on this machine). Hybrid's prefilter is a stub scorer (no model time) so that the rounds
of LLM calls show; the table also runs the old default ``max_concurrency=8``.

Part 2 (``admit``): ``--reranks`` pointwise reranks of 20 documents started together on one
:class:`~llmrerank.Reranker`, against a server that answers at most ``--admit`` N requests at once
and answers 429 with ``retry-after`` (``--retry-after`` seconds) beyond them; the SDK retries as
usual (``max_retries=2``). Rows: the adaptive limit (default ceiling 32), the same ceiling held
fixed (no cut, no pause: the old behaviour with a higher default), and a fixed limit of exactly N
(what a user who knew N would set). ``of ideal`` is calls per second over N / latency.

    python benchmarks/concurrency.py --latency 0.2 --admit 4 --reranks 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank import Hybrid, Listwise, Pointwise, Reranker
from llmrerank.adaptive import DEFAULT_MAX_CONCURRENCY, AdaptiveLimiter, Slot
from llmrerank.backends.openai import OpenAIBackend
from testkit.server import FakeLLMServer, overlap_responder

QUERY = "which treatments lower blood pressure in older adults"
DOCS = [f"Study {i}: blood pressure in older adults fell with treatment {i % 7}; outcomes vary." for i in range(20)]


class StubScorer:
    """A prefilter that costs nothing, so that only LLM rounds take time."""

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [float(len(doc) % 13) for _, doc in pairs]


class FixedLimiter(AdaptiveLimiter):
    """A limit that never adapts: rate limits are counted, nothing is cut or paused, slots are kept."""

    def rate_limited(self, slot: Slot, retry_after: float | None = None, *, retrying: bool = False) -> None:
        slot.rate_limited = True
        with self._lock:
            self.rate_limits += 1

    def succeeded(self, slot: Slot) -> None:
        pass


def backend(server: FakeLLMServer) -> OpenAIBackend:
    # A hosted API's retry setting: for a server on this machine the SDK would not retry by default.
    return OpenAIBackend("gpt-4o-mini", base_url=server.base_url, api_key="sk-bench", logprobs=False, max_retries=2)


@contextlib.contextmanager
def server_process(latency: float) -> Iterator[str]:
    """A FakeLLMServer in a process of its own (its threads then take no CPU from the client's); yields its base URL."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from testkit.server import FakeLLMServer, overlap_responder\n"
        f"server = FakeLLMServer(overlap_responder, latency={latency!r}).start()\n"
        "print(server.base_url, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


async def rounds(latency: float, repeats: int) -> list[str]:
    """Part 1 rows: median wall time of one rerank over one call's latency."""
    rows = []
    one_call = 0.0
    with server_process(latency) as url:
        for concurrency in (DEFAULT_MAX_CONCURRENCY, 8):
            setting = "default (32)" if concurrency == DEFAULT_MAX_CONCURRENCY else "old default (8)"
            cases = {
                "listwise (one call)": Listwise(),
                "pointwise": Pointwise(method="generate"),
                "hybrid (keep 10, pointwise)": Hybrid(cross_encoder=StubScorer(), keep=10, llm="pointwise"),
                "hybrid (keep 20, pointwise)": Hybrid(cross_encoder=StubScorer(), keep=20, llm="pointwise"),
            }
            for name, strategy in cases.items():
                client = OpenAIBackend("gpt-4o-mini", base_url=url, api_key="sk-bench", logprobs=False)
                reranker = Reranker(strategy, client, max_concurrency=concurrency)
                await reranker.arerank(QUERY, DOCS)  # warm the connections
                walls, calls = [], 0
                for _ in range(repeats):
                    started = time.perf_counter()
                    result = await reranker.arerank(QUERY, DOCS)
                    walls.append(time.perf_counter() - started)
                    calls = result.usage.calls
                wall = statistics.median(walls)
                one_call = one_call or wall  # the listwise row comes first: one call, its own client overhead
                ratios = f"{wall / latency:.2f} | {wall / one_call:.2f}"
                rows.append(f"| {name} | {setting} | {calls} | {wall * 1000:.0f} | {ratios} |")
                await reranker.backend.aclose()
    return rows


async def admit(n: int, latency: float, retry_after: float, reranks: int, limiter: AdaptiveLimiter) -> str:
    """One part 2 row."""
    with FakeLLMServer(overlap_responder, latency=latency, admit=n, retry_after=retry_after) as server:
        reranker = Reranker(Pointwise(method="generate"), backend(server))
        await reranker.arerank(QUERY, DOCS[:2])  # the SDK client made, a connection open
        server.clear()
        reranker._limits = limiter
        started = time.perf_counter()
        results = await asyncio.gather(*(reranker.arerank(QUERY, DOCS) for _ in range(reranks)))
        wall = time.perf_counter() - started
        await reranker.backend.aclose()
        answered = sum(r.usage.calls - r.usage.failed_calls for r in results)
        failed = sum(r.usage.failed_calls for r in results)
        degraded = sum(r.degraded for r in results)
        rejected, most = server.rejected, server.max_in_flight
    rate = answered / wall
    ideal = n / latency
    name = type(limiter).__name__.replace("Limiter", "").lower()
    return (
        f"| {name}, ceiling {limiter.ceiling} | {answered} | {wall:.1f} | {rate:.1f} | {rate / ideal:.0%} "
        f"| {rejected} | {failed} | {degraded} | {most} | {limiter.limit} | {limiter.cuts} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per answer")
    parser.add_argument("--repeats", type=int, default=15, help="reranks per part 1 row")
    parser.add_argument("--admit", type=int, default=4, help="requests the part 2 server answers at once")
    parser.add_argument("--retry-after", type=float, default=0.2, help="the part 2 server's retry-after")
    parser.add_argument("--reranks", type=int, default=20, help="concurrent reranks of 20 documents in part 2")
    parser.add_argument("--parts", nargs="+", choices=["rounds", "admit"], default=["rounds", "admit"])
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    if "rounds" in args.parts:
        print(f"One rerank of 20 documents, server latency {args.latency * 1000:.0f} ms, median of {args.repeats}\n")
        print("| strategy | max_concurrency | calls | wall ms | wall / latency | wall / one-call rerank |")
        print("|---|---|---:|---:|---:|---:|")
        for row in asyncio.run(rounds(args.latency, args.repeats)):
            print(row, flush=True)
        print()
    if "admit" in args.parts:
        n = args.admit
        print(
            f"{args.reranks} concurrent pointwise reranks of 20 documents; the server answers {n} at once "
            f"({args.latency * 1000:.0f} ms each; ideal {n / args.latency:.0f} calls/s), else 429 with "
            f"retry-after {args.retry_after:g} s\n"
        )
        print(
            "| limiter | calls answered | wall s | calls/s | of ideal | 429s | failed calls | degraded reranks "
            "| server max in flight | final limit | cuts |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for limiter in (
            AdaptiveLimiter(DEFAULT_MAX_CONCURRENCY),
            FixedLimiter(DEFAULT_MAX_CONCURRENCY),
            FixedLimiter(n),
        ):
            print(asyncio.run(admit(n, args.latency, args.retry_after, args.reranks, limiter)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
