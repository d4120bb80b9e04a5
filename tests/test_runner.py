"""The blocking API's shared background loop (llmrerank.runner)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from llmrerank import ConfigurationError, Reranker
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.protocol import Prompt
from llmrerank.runner import background_loop, run_blocking
from llmrerank.testing import overlap_judge
from testkit.server import FakeLLMServer, ServerRequest

DOCS = ["the cat sat", "dogs bark at night", "birds sing at dawn"]


def judge(request: ServerRequest) -> str:
    answer = overlap_judge(Prompt(system=request.system, user=request.user))
    return answer if isinstance(answer, str) else answer.text


def test_blocking_reranks_reuse_one_client() -> None:
    with FakeLLMServer(judge) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, api_key="test")
        made = 0
        original = backend._make_client

        def counting() -> object:
            nonlocal made
            made += 1
            return original()

        backend._make_client = counting  # type: ignore[method-assign]
        backend._clients.factory = counting
        reranker = Reranker("listwise", backend)
        first = reranker.rerank("why do dogs bark", DOCS)
        results = [reranker.rerank("why do dogs bark", DOCS) for _ in range(3)]
        assert all(r.indices == first.indices for r in results)
        assert first.indices[0] == 1
        assert made == 1
        assert len(server.requests) == 4


def test_blocking_call_from_threads_and_loops() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    out: list[int] = []
    threads = [threading.Thread(target=lambda i=i: out.append(run_blocking(double(i)))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [2 * i for i in range(8)]

    async def inside_a_loop() -> int:
        return run_blocking(double(21))

    assert asyncio.run(inside_a_loop()) == 42


def test_errors_propagate_with_their_type() -> None:
    async def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        run_blocking(fail())


def test_blocking_call_on_the_background_loop_itself_is_refused() -> None:
    async def nested() -> None:
        async def inner() -> int:
            return 1

        run_blocking(inner())

    future = asyncio.run_coroutine_threadsafe(nested(), background_loop())
    with pytest.raises(ConfigurationError, match="own event loop"):
        future.result(timeout=5)
