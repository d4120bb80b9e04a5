"""Failing fast: ``timeout=`` bounds a whole call, retry waits are capped, a rerank stops calling a
server that keeps timing out, and a deadline's cancelled calls are counted consistently.

Through the real SDKs against FakeLLMServer. Each test wraps the rerank in a generous outer
``asyncio.wait_for``: without the behaviour under test it would wait for minutes (or an hour).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llmrerank import BackendTimeoutError, Listwise, RateLimitError, Reranker
from testkit.server import FakeLLMServer, Reply, ServerRequest, overlap_responder

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from sdk_support import backend_for, rerank_and_close

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]
GUARD = 30.0  # seconds; far below what the unbounded behaviour would take
APIS = ["openai", "anthropic"]


judge = overlap_responder


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(judge) as srv:
        yield srv


async def rerank(reranker: Reranker, docs: list[str] = DOCS) -> Any:
    return await rerank_and_close(reranker, QUERY, docs, GUARD)


@pytest.mark.parametrize("api", APIS)
async def test_timeout_bounds_a_server_that_drips_its_answer(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(text="[2] > [1] > [3]", drip=0.2)  # ~300 bytes: a minute, each read < 1 s
    with pytest.raises(BackendTimeoutError, match="timeout=1"):
        await rerank(Reranker("listwise", backend_for(api, server, timeout=1.0, max_retries=0), on_error="raise"))
    result = await rerank(Reranker("listwise", backend_for(api, server, timeout=1.0, max_retries=0)))
    assert result.degraded and result.indices == [0, 1, 2]
    assert "BackendTimeoutError" in next(d.message for d in result.diagnostics if d.code == "call_failed")


@pytest.mark.parametrize("api", APIS)
async def test_a_long_retry_after_fails_fast_with_its_wait(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(status=429, text="slow down", headers={"retry-after": "3600"})
    backend = backend_for(api, server, timeout=20.0, max_retries=3)
    with pytest.raises(RateLimitError) as info:
        await rerank(Reranker("listwise", backend, on_error="raise"))
    assert info.value.retry_after == 3600.0
    assert len(server.requests) == 1  # not retried: the wait would outlast the call


@pytest.mark.parametrize("api", APIS)
async def test_a_retry_after_past_the_deadline_is_not_waited_for(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(status=429, text="slow down", headers={"retry-after": "5"})
    backend = backend_for(api, server, timeout=60.0, max_retries=3)
    result = await rerank(Reranker("listwise", backend, deadline=2.0))
    assert len(server.requests) == 1
    assert result.degraded and not any(d.code == "deadline_exceeded" for d in result.diagnostics)
    assert "RateLimitError" in next(d.message for d in result.diagnostics if d.code == "call_failed")
    server.responder = FailFirst(Reply(status=429, headers={"retry-after": "0.05"}))
    result = await rerank(Reranker("listwise", backend_for(api, server, max_retries=2), deadline=10.0))
    assert not result.degraded and result.indices == [1, 0, 2]  # a short wait is still retried


class FailFirst:
    def __init__(self, reply: Reply) -> None:
        self.reply: Reply | None = reply

    def __call__(self, request: ServerRequest) -> Reply | str:
        reply, self.reply = self.reply, None
        return reply if reply is not None else judge(request)


async def test_repeated_timeouts_stop_the_rerank_calling(server: FakeLLMServer) -> None:
    server.responder = Reply(text="[1] > [2]", delay=60.0)  # accepts, never answers in time
    docs = [f"document {i} about dogs" for i in range(6)]
    strategy = Listwise(window=2, step=1)  # 5 sequential windows
    result = await rerank(Reranker(strategy, backend_for("openai", server, timeout=0.3, max_retries=0)), docs)
    posts = [r for r in server.requests if r.method == "POST"]
    assert len(posts) == 2  # two timeouts in a row (the server answers a check), then nothing more is sent
    assert result.degraded and result.indices == list(range(6))
    assert any(d.code == "circuit_open" for d in result.diagnostics)
    assert result.usage.calls == result.usage.failed_calls == 2


async def test_one_timeout_between_answers_does_not_stop_the_rerank(server: FakeLLMServer) -> None:
    answers = iter([Reply(delay=60.0), "[2] > [1]", Reply(delay=60.0), "[2] > [1]", "[2] > [1]"])
    server.responder = lambda request: next(answers)
    docs = [f"document {i} about dogs" for i in range(6)]
    strategy = Listwise(window=2, step=1)
    result = await rerank(Reranker(strategy, backend_for("openai", server, timeout=0.3, max_retries=0)), docs)
    assert len([r for r in server.requests if r.method == "POST"]) == 5
    assert not any(d.code == "circuit_open" for d in result.diagnostics)


async def test_calls_cut_by_the_deadline_count_as_calls_and_failures(server: FakeLLMServer) -> None:
    server.responder = Reply(text="5", delay=5.0)
    reranker = Reranker("pointwise", backend_for("openai", server), deadline=0.5)
    result = await rerank(reranker)
    assert result.degraded
    assert result.usage.calls == result.usage.failed_calls == len(DOCS)
