"""Load: 200 concurrent reranks on one Reranker against FakeLLMServer, through the real OpenAI SDK.

Checks the concurrency bound as the server sees it, that everything completes (no deadlock), and
that nothing leaks: tasks, sockets (open file descriptors) or memory across rounds.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from llmrerank import Reranker
from llmrerank.protocol import Prompt
from llmrerank.testing import overlap_judge
from testkit.server import FakeLLMServer, Reply, ServerRequest

pytest.importorskip("openai")

from llmrerank.backends.openai import OpenAIBackend

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]
REQUESTS = 200
ROUND = 60  # reranks per round of the memory test (tracemalloc slows everything down)


class CountingResponder:
    """Judges by overlap after ``delay`` seconds, counting requests in flight itself (with a lock)."""

    def __init__(self, delay: float = 0.02, fail_every: int = 0) -> None:
        self.delay = delay
        self.fail_every = fail_every
        self.in_flight = 0
        self.max_in_flight = 0
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, request: ServerRequest) -> Reply | str:
        with self._lock:
            self.in_flight += 1
            self.count += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            number = self.count
        try:
            time.sleep(self.delay)
            if self.fail_every and number % self.fail_every == 0:
                return Reply(status=500, text="transient")
            return overlap_judge(Prompt(request.system, request.user))
        finally:
            with self._lock:
                self.in_flight -= 1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle_fds(limit: int, timeout: float = 3.0) -> int:
    """Open fds, waiting a little for the server side to close connections the client dropped."""
    ends = time.monotonic() + timeout
    count = open_fds()
    while count > limit and time.monotonic() < ends:
        await asyncio.sleep(0.05)
        gc.collect()
        count = open_fds()
    return count


@pytest.fixture
def responder() -> CountingResponder:
    return CountingResponder()


@pytest.fixture
def server(responder: CountingResponder) -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder) as srv:
        yield srv


def make_backend(srv: FakeLLMServer, **options: Any) -> OpenAIBackend:
    options.setdefault("max_retries", 0)
    return OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", logprobs=False, **options)


async def storm(reranker: Reranker, n: int = REQUESTS, strategy_docs: list[str] = DOCS) -> list[Any]:
    jobs = [reranker.arerank(QUERY, strategy_docs) for _ in range(n)]
    return await asyncio.wait_for(asyncio.gather(*jobs), timeout=60)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("k", [1, 8, 32])
async def test_concurrent_reranks_are_bounded_complete_and_leak_nothing(
    server: FakeLLMServer, responder: CountingResponder, k: int
) -> None:
    tasks_before = asyncio.all_tasks()
    fds_before = open_fds()
    # Slow enough answers that a busy 2-core machine still fills the bound before the first ones return.
    responder.delay = 0.02 * max(1, k // 8)
    backend = make_backend(server)
    reranker = Reranker("listwise", backend, max_concurrency=k)
    n = REQUESTS if k > 1 else 30  # K=1 is sequential; fewer keep it fast
    try:
        results = await storm(reranker, n)
    finally:
        await backend.aclose()
    assert len(results) == n
    assert all(r.indices == [1, 0, 2] and not r.degraded for r in results)
    assert len(server.requests) == n
    # The bound, as the server saw it (its own counter and the responder's agree).
    assert responder.max_in_flight <= k and server.max_in_flight <= k
    assert responder.max_in_flight >= max(1, k // 2)  # the bound is used, not just respected
    assert asyncio.all_tasks() == tasks_before
    assert await settle_fds(fds_before + 2) <= fds_before + 2


async def test_bound_holds_for_many_calls_per_rerank(server: FakeLLMServer, responder: CountingResponder) -> None:
    backend = make_backend(server)
    reranker = Reranker("pairwise", backend, max_concurrency=6)  # 3 documents: 6 calls per rerank
    try:
        results = await storm(reranker, 40)
    finally:
        await backend.aclose()
    assert len(server.requests) == 40 * 6
    assert 3 <= responder.max_in_flight <= 6 and all(sorted(r.indices) == [0, 1, 2] for r in results)


async def test_failures_under_load_degrade_without_deadlock(server: FakeLLMServer) -> None:
    server.responder = CountingResponder(delay=0.002, fail_every=7)
    backend = make_backend(server)
    reranker = Reranker("pointwise", backend, max_concurrency=8)
    tasks_before = asyncio.all_tasks()
    n = 100
    try:
        results = await storm(reranker, n)
    finally:
        await backend.aclose()
    assert len(results) == n
    degraded = sum(r.degraded for r in results)
    assert 0 < degraded < n
    assert sum(r.usage.failed_calls for r in results) == n * len(DOCS) // 7
    assert all(sorted(r.indices) == [0, 1, 2] for r in results)
    assert asyncio.all_tasks() == tasks_before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_deadline_under_load_cancels_cleanly(server: FakeLLMServer) -> None:
    server.responder = Reply(text="[1] > [2] > [3]", delay=2.0)
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    backend = make_backend(server)
    reranker = Reranker("listwise", backend, max_concurrency=16, deadline=0.3)
    started = time.perf_counter()
    try:
        results = await storm(reranker, 100)
    finally:
        await backend.aclose()
    assert time.perf_counter() - started < 2.0
    assert all(r.degraded and r.indices == [0, 1, 2] for r in results)
    assert asyncio.all_tasks() == tasks_before
    assert await settle_fds(fds_before + 2) <= fds_before + 2


async def test_memory_is_flat_across_rounds(server: FakeLLMServer) -> None:
    server.responder = CountingResponder(delay=0.001)
    backend = make_backend(server)
    reranker = Reranker("listwise", backend, max_concurrency=16)
    try:
        await storm(reranker, ROUND)  # warm up: client, connection pool, caches
        server.clear()
        gc.collect()
        tracemalloc.start()
        try:
            await storm(reranker, ROUND)
            server.clear()
            gc.collect()
            first = tracemalloc.take_snapshot()
            await storm(reranker, ROUND)
            server.clear()
            gc.collect()
            second = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    finally:
        await backend.aclose()
    growth = sum(stat.size_diff for stat in second.compare_to(first, "filename"))
    assert growth < 256 * 1024, f"grew {growth} bytes over a round of {ROUND} reranks"
