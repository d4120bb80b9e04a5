"""Response caches compared: MemoryCache, DiskCache and RedisCache get/set latency, and a rerank
whose every answer comes from the cache.

RedisCache runs against a redis-server this script starts on a free loopback port (no
persistence), or the server ``--redis URL`` names. Values are what a pointwise rerank stores (a
completion of a few tokens, about 150 bytes of JSON).

    python benchmarks/cache.py                               # table on stdout
    python benchmarks/cache.py --out benchmarks/results      # also cache.json and cache.md
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmark_support import machine, make_parser, publish

from llmrerank import DiskCache, MemoryCache, Pointwise, RedisCache, Reranker
from llmrerank.cache import encode
from llmrerank.protocol import Completion
from llmrerank.testing import FakeBackend

VALUE = encode(Completion("7", prompt_tokens=412, completion_tokens=1, model="gpt-4o-mini-2024-07-18"))


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """``url``, or a redis-server of our own on a free loopback port for the duration."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server), or pass --redis URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="llmrerank-bench-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in microseconds."""
    ordered = sorted(seconds)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
    }


def timed(operation: Callable[[int], object], n: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        operation(i)
        times.append(time.perf_counter() - started)
    return times


def timed_async(operation: Callable[[int], Any], n: int) -> list[float]:
    async def run() -> list[float]:
        times = []
        for i in range(n):
            started = time.perf_counter()
            await operation(i)
            times.append(time.perf_counter() - started)
        return times

    return asyncio.run(run())


def key(i: int) -> str:
    return f"{i:064x}"


def measure(name: str, cache: Any, ops: int, batch: int) -> list[dict[str, Any]]:
    """Rows for one cache: set, get (hit), get (miss), a step's batch of gets, and the off-loop
    ``aget_many`` / ``aset`` a rerank uses where the cache has them (the event loop runs meanwhile)."""
    rows = []

    def row(operation: str, times: list[float]) -> None:
        rows.append({"cache": name, "operation": operation, "ops": len(times), **percentiles(times)})

    row("set", timed(lambda i: cache.set(key(i), VALUE), ops))
    row("get (hit)", timed(lambda i: cache.get(key(i)), ops))
    row("get (miss)", timed(lambda i: cache.get(key(ops + i)), ops))
    groups = max(1, ops // batch)
    keys = [[key(g * batch + j) for j in range(batch)] for g in range(groups)]
    if hasattr(cache, "get_many"):
        row(f"{batch} gets, one MGET", timed(lambda g: cache.get_many(keys[g]), groups))
        row(f"{batch} gets, await aget_many", timed_async(lambda g: cache.aget_many(keys[g]), groups))
    else:
        row(f"{batch} gets, one by one", timed(lambda g: [cache.get(k) for k in keys[g]], groups))
    if hasattr(cache, "aset"):
        row("await aset", timed_async(lambda i: cache.aset(key(i), VALUE), ops))
    return rows


def cached_rerank(name: str, cache: Any, docs: int, repeats: int) -> dict[str, Any]:
    """A pointwise rerank of ``docs`` documents answered entirely from ``cache`` (one warm-up rerank fills it)."""
    texts = [f"document {i} about solar panels and wind turbines, item {i}" for i in range(docs)]
    reranker = Reranker(Pointwise(method="generate"), FakeBackend(respond=lambda p: "7"), cache=cache)

    async def run() -> list[float]:
        await reranker.arerank("solar panels", texts)  # fills the cache
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = await reranker.arerank("solar panels", texts)
            times.append(time.perf_counter() - started)
            assert result.usage.cached_calls == docs and result.usage.calls == 0, result.usage
        return times

    times = asyncio.run(run())
    return {
        "cache": name,
        "operation": f"pointwise rerank, {docs} docs, all hits",
        "ops": repeats,
        **percentiles(times),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| cache | operation | ops | p50 µs | p99 µs |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cache']} | {r['operation']} | {r['ops']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; with ``--out``, write cache.json and cache.md."""
    parser = make_parser(__doc__)
    parser.add_argument("--ops", type=int, default=1000, help="operations per row")
    parser.add_argument("--batch", type=int, default=10, help="keys per step (one rerank's prompts)")
    parser.add_argument("--reranks", type=int, default=200, help="cached reranks per cache")
    parser.add_argument("--redis", help="a Redis URL to use instead of starting redis-server")
    parser.add_argument("--out", help="folder for cache.json and cache.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder, redis_server(args.redis) as url:
        caches: list[tuple[str, Callable[[str], Any]]] = [
            ("MemoryCache", lambda prefix: MemoryCache()),
            ("DiskCache", lambda prefix: DiskCache(Path(folder) / prefix)),
            ("RedisCache", lambda prefix: RedisCache(url, prefix=f"bench-{os.getpid()}-{prefix}:")),
        ]
        for name, make in caches:
            cache, rerank_cache = make("ops"), make("rerank")
            try:
                rows += measure(name, cache, args.ops, args.batch)
                rows.append(cached_rerank(name, rerank_cache, args.batch, args.reranks))
            finally:
                for made in (cache, rerank_cache):
                    if hasattr(made, "clear"):
                        made.clear()  # a --redis server keeps nothing of ours
                    if hasattr(made, "close"):
                        made.close()
    redis = "the given Redis" if args.redis else "a redis-server on loopback started by the script"
    note = (
        f"one client, sequential operations; values about {len(json.dumps(VALUE))} bytes of JSON; "
        f"RedisCache against {redis}; DiskCache in a temporary folder; {machine(cores=True)}, load average {load:.1f} "
        f"at the start; {time.strftime('%Y-%m-%d')}"
    )
    publish("cache", markdown(rows), note, args.out, argv, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
