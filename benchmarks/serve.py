"""Benchmark: ``llmrerank serve`` over HTTP against in-process ``arerank``.

The server runs as a real ``llmrerank serve`` process on 127.0.0.1 (1 or 2 uvicorn workers); the
clients are httpx in this process. Two LLMs:

- **0 ms**: ``--backend fake`` (llmrerank.testing's FakeBackend judging by word overlap, in the
  server process): no LLM time at all, so what is measured is the server's own cost.
- **200 ms**: ``--backend openai --base-url`` a FakeLLMServer on loopback that waits 200 ms per call,
  through the real OpenAI SDK (the in-process baseline uses the same server and SDK).

Figures: the latency the server adds over in-process ``arerank`` (pointwise, 10 documents, one
request at a time; p50 and p99 of each, and their difference); reranks per second with 1 and 2
workers (pointwise, 10 documents, 0 ms LLM, 32 clients at once); 500 clients at once (each one
request; errors counted); the server's resident memory after 1,000 and after 10,000 requests
(listwise, loopback LLM at 0 ms: the fake backend keeps its call history).

    python benchmarks/serve.py                               # table on stdout
    python benchmarks/serve.py --out benchmarks/results      # also serve.json and serve.md
    python benchmarks/serve.py --quick                       # a small run (smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank import Reranker
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.serve_process import child_pids, start_serve, stop_serve
from testkit.server import FakeLLMServer, overlap_responder

QUERY = "how do solar panels turn sunlight into electricity"
DOCS = [
    f"Document {i}: "
    + ("solar panels turn sunlight into electricity " if i % 3 == 0 else "bread rises with yeast ")
    + "and other words to make a passage of ordinary length " * 4
    for i in range(10)
]
BODY = {"model": "pointwise", "query": QUERY, "documents": DOCS}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def start_server(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A ``llmrerank serve`` process logging warnings only (its output is not kept), once it answers /ready."""
    return start_serve(*args, "--log-level", "warning", env=env, log=False, wait=90)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the workers), MiB."""
    pids = [pid, *child_pids(pid)]
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def sequential(url: str, n: int) -> list[float]:
    """Seconds per request, one at a time on one keep-alive connection."""
    times = []
    with httpx.Client(timeout=60) as client:
        client.post(f"{url}/v2/rerank", json=BODY).raise_for_status()  # warm up
        for _ in range(n):
            started = time.perf_counter()
            client.post(f"{url}/v2/rerank", json=BODY).raise_for_status()
            times.append(time.perf_counter() - started)
    return times


async def _in_process(reranker: Reranker, n: int) -> list[float]:
    await reranker.arerank(QUERY, DOCS)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        result = await reranker.arerank(QUERY, DOCS)
        times.append(time.perf_counter() - started)
        assert not result.degraded
    return times


def in_process(reranker: Reranker, n: int) -> list[float]:
    return asyncio.run(_in_process(reranker, n))


async def _load(url: str, total: int, concurrency: int, body: dict[str, Any]) -> tuple[float, dict[int, int]]:
    """Send ``total`` requests from ``concurrency`` clients at once; return (seconds, count per status)."""
    statuses: dict[int, int] = {}
    queue = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            for _ in queue:
                try:
                    status = (await client.post(f"{url}/v2/rerank", json=body)).status_code
                except httpx.HTTPError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, statuses


def load(url: str, total: int, concurrency: int, body: dict[str, Any] = BODY) -> tuple[float, dict[int, int]]:
    return asyncio.run(_load(url, total, concurrency, body))


def added_latency(rows: list[dict[str, Any]], label: str, url: str, reranker: Reranker, n: int) -> None:
    local = in_process(reranker, n)
    http = sequential(url, n)
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        rows.append(
            {
                "figure": f"added latency {name}, {label}",
                "value": f"{(percentile(http, q) - percentile(local, q)) * 1000:.2f} ms",
                "detail": f"HTTP {percentile(http, q) * 1000:.2f} ms vs in-process "
                f"{percentile(local, q) * 1000:.2f} ms, {n} sequential pointwise reranks of 10 documents",
            }
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; with ``--out``, write serve.json and serve.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test, not figures")
    parser.add_argument("--out", help="folder for serve.json and serve.md")
    args = parser.parse_args(argv)
    n_seq, n_load, n_memory, crowd = (20, 100, 300, 50) if args.quick else (300, 3000, 10_000, 500)
    first = n_memory // 10
    rows: list[dict[str, Any]] = []

    # 0 ms LLM: the fake backend, in the server process and in this one.
    proc, url = start_server("--backend", "fake", "--max-in-flight", "1000")
    try:
        added_latency(rows, "0 ms LLM", url, Reranker("pointwise", FakeBackend(respond=overlap_judge)), n_seq)
        seconds, statuses = load(url, n_load, 32)
        rows.append(
            {
                "figure": "reranks/s, 1 worker, 0 ms LLM",
                "value": f"{n_load / seconds:.0f}",
                "detail": f"{n_load} pointwise reranks of 10 documents, 32 clients at once; statuses {statuses}",
            }
        )
        seconds, statuses = load(url, crowd, crowd)
        rows.append(
            {
                "figure": f"{crowd} clients at once, 0 ms LLM",
                "value": f"{crowd - statuses.get(200, 0)} errors",
                "detail": f"one pointwise rerank each, {seconds:.2f} s in all; statuses {statuses}",
            }
        )
    finally:
        stop_serve(proc, grace=30)
    proc, url = start_server("--backend", "fake", "--workers", "2", "--max-in-flight", "1000")
    try:
        load(url, 100, 32)
        seconds, statuses = load(url, n_load, 32)
        rows.append(
            {
                "figure": "reranks/s, 2 workers, 0 ms LLM",
                "value": f"{n_load / seconds:.0f}",
                "detail": f"{n_load} pointwise reranks of 10 documents, 32 clients at once; statuses {statuses}",
            }
        )
    finally:
        stop_serve(proc, grace=30)

    # Memory: the fake backend keeps every prompt it was asked (its call history), so this run's LLM is
    # a loopback OpenAI-compatible server (0 ms) in this process, through the real SDK in the server's.
    with FakeLLMServer(overlap_responder) as llm:
        proc, url = start_server(
            "--backend", "openai", "--model", "fake-model", "--base-url", llm.base_url, env={"OPENAI_API_KEY": "test"}
        )
        try:
            listwise = {**BODY, "model": "listwise"}
            before = rss_mib(proc.pid)
            load(url, first, 32, listwise)
            after_first = rss_mib(proc.pid)
            seconds, statuses = load(url, n_memory - first, 32, listwise)
            after_all = rss_mib(proc.pid)
            llm.clear()  # the loopback server's own request log
            rows.append(
                {
                    "figure": f"server memory over {n_memory} requests",
                    "value": f"{after_first:.0f} -> {after_all:.0f} MiB",
                    "detail": f"resident set after {first} and after {n_memory} listwise reranks of 10 documents, "
                    f"loopback LLM at 0 ms (at start: {before:.0f} MiB; {(n_memory - first) / seconds:.0f} "
                    f"reranks/s; statuses {statuses})",
                }
            )
        finally:
            stop_serve(proc, grace=30)

    # 200 ms LLM: a loopback OpenAI-compatible server, through the real SDK on both sides.
    with FakeLLMServer(overlap_responder, latency=0.2) as llm:
        env = {"OPENAI_API_KEY": "test"}
        proc, url = start_server(
            "--backend",
            "openai",
            "--model",
            "fake-model",
            "--base-url",
            llm.base_url,
            "--max-in-flight",
            "1000",
            env=env,
        )
        try:
            backend = OpenAIBackend("fake-model", base_url=llm.base_url, api_key="test")
            added_latency(rows, "200 ms LLM", url, Reranker("pointwise", backend), max(10, n_seq // 10))
            listwise = {**BODY, "model": "listwise"}
            seconds, statuses = load(url, crowd, crowd, listwise)
            rows.append(
                {
                    "figure": f"{crowd} clients at once, 200 ms LLM",
                    "value": f"{crowd - statuses.get(200, 0)} errors",
                    "detail": f"one listwise rerank each (one LLM call; 32 in flight per reranker), {seconds:.2f} s "
                    f"in all; statuses {statuses}",
                }
            )
        finally:
            stop_serve(proc, grace=30)

    table = "\n".join(
        ["| figure | value | detail |", "|---|---:|---|"]
        + [f"| {r['figure']} | {r['value']} | {r['detail']} |" for r in rows]
    )
    note = (
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end; "
        "server and clients on the same machine."
    )
    print(table)
    print(note)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        command = ["python", "benchmarks/serve.py", *(argv if argv is not None else sys.argv[1:])]
        (out / "serve.json").write_text(json.dumps({"rows": rows, "note": note}, indent=1) + "\n", encoding="utf-8")
        (out / "serve.md").write_text(f"{table}\n\n{note}\n\nCommand: `{' '.join(command)}`\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
