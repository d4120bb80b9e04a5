"""Fault injection end to end: Reranker + the real OpenAI/Anthropic SDKs + FakeLLMServer on loopback.

Each test scripts the server (rate limits, 5xx, 529, slow replies, connection resets) and checks
what the caller sees: the SDK's retries, a degraded fallback order with diagnostics naming the
error (default ``on_error="degrade"``), the typed error with ``on_error="raise"``, and a rerank
that never outlives its ``deadline``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from llmrerank import (
    BackendError,
    BackendTimeoutError,
    DeadlineExceededError,
    Hybrid,
    Listwise,
    Pairwise,
    Pointwise,
    RateLimitError,
    Reranker,
    Strategy,
)
from llmrerank.backends.base import Backend
from testkit.sample import DOCS as SAMPLE_DOCS
from testkit.sample import QUERY, best_first
from testkit.server import FakeLLMServer, Reply, ServerRequest, overlap_responder

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend

DOCS = SAMPLE_DOCS[:4]
BEST_FIRST = best_first(QUERY, DOCS)
INPUT_ORDER = list(range(len(DOCS)))
APIS = ["openai", "anthropic"]


class ReverseScorer:
    """A cross-encoder stand-in that prefers later documents, so its order differs from the input's."""

    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(i) for i in range(len(pairs))]


CE_ORDER = list(reversed(INPUT_ORDER))


def strategies() -> dict[str, Strategy]:
    return {
        "pointwise": Pointwise(),
        "pairwise": Pairwise(),
        "listwise": Listwise(),
        "hybrid": Hybrid(cross_encoder=ReverseScorer(), keep=3, llm="listwise"),
    }


judge = overlap_responder


class FailFirst:
    """Answer the first ``n`` requests with ``reply``, then judge by overlap. Thread-safe."""

    def __init__(self, n: int, reply: Reply) -> None:
        self.n = n
        self.reply = reply
        self._lock = threading.Lock()

    def __call__(self, request: ServerRequest) -> Reply | str:
        with self._lock:
            if self.n > 0:
                self.n -= 1
                return self.reply
        return judge(request)


def backend_for(api: str, srv: FakeLLMServer, **options: Any) -> Backend:
    options.setdefault("max_retries", 0)
    if api == "openai":
        return OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", logprobs=False, **options)
    return AnthropicBackend("claude-test", base_url=srv.anthropic_base_url, api_key="sk-ant-test", **options)


async def rerank(reranker: Reranker, docs: list[str] = DOCS, top_k: int | None = None) -> Any:
    try:
        return await reranker.arerank(QUERY, docs, top_k)
    finally:
        await reranker.backend.aclose()


def failed_messages(result: Any) -> list[str]:
    return [d.message for d in result.diagnostics if d.code == "call_failed"]


# --- 429 with retry-after, then success: the SDK retries and the result is whole ------------------


@pytest.mark.parametrize("api", APIS)
async def test_rate_limit_then_success_is_retried(server: FakeLLMServer, api: str) -> None:
    server.responder = FailFirst(1, Reply(status=429, text="slow down", headers={"retry-after": "0.01"}))
    result = await rerank(Reranker("listwise", backend_for(api, server, max_retries=2)))
    assert len(server.requests) == 2  # one 429, one success
    assert not result.degraded
    assert result.indices == BEST_FIRST
    assert result.usage.calls == 1 and result.usage.failed_calls == 0


async def test_rate_limits_on_some_pointwise_calls_are_retried(server: FakeLLMServer) -> None:
    server.responder = FailFirst(3, Reply(status=429, headers={"retry-after-ms": "5"}))
    result = await rerank(Reranker("pointwise", backend_for("openai", server, max_retries=3)))
    assert len(server.requests) == len(DOCS) + 3
    assert not result.degraded and result.indices == BEST_FIRST


# --- persistent errors: degrade to the fallback order, or raise the typed error -------------------


FAILURES = [
    pytest.param("openai", Reply(status=500, text="boom"), BackendError, 500, id="openai-500"),
    pytest.param("anthropic", Reply(status=500, text="boom"), BackendError, 500, id="anthropic-500"),
    pytest.param("openai", Reply(status=429, headers={"retry-after": "9"}), RateLimitError, 429, id="openai-429"),
    pytest.param("anthropic", Reply(status=529, headers={"retry-after": "9"}), RateLimitError, 529, id="anthropic-529"),
    pytest.param("openai", Reply(status=503), BackendError, 503, id="openai-503"),
]


@pytest.mark.parametrize("name", ["pointwise", "pairwise", "listwise", "hybrid"])
@pytest.mark.parametrize(("api", "reply", "error", "status"), FAILURES)
async def test_persistent_failure_degrades_to_the_fallback_order(
    server: FakeLLMServer, name: str, api: str, reply: Reply, error: type[BackendError], status: int
) -> None:
    server.responder = reply
    result = await rerank(Reranker(strategies()[name], backend_for(api, server)))
    assert result.degraded
    assert result.indices == (CE_ORDER if name == "hybrid" else INPUT_ORDER)
    messages = failed_messages(result)
    assert messages and all(error.__name__ in m and str(status) in m for m in messages)
    assert result.usage.failed_calls == len(server.requests) > 0
    if name == "hybrid":
        assert result.score_kind == "cross_encoder"
        assert [item.score for item in result][:3] == [3.0, 2.0, 1.0]


@pytest.mark.parametrize(("api", "reply", "error", "status"), FAILURES)
async def test_persistent_failure_raises_the_typed_error(
    server: FakeLLMServer, api: str, reply: Reply, error: type[BackendError], status: int
) -> None:
    server.responder = reply
    with pytest.raises(error) as info:
        await rerank(Reranker("listwise", backend_for(api, server), on_error="raise"))
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.backend == api
    if error is RateLimitError:
        assert isinstance(info.value, RateLimitError) and info.value.retry_after == 9.0


async def test_retries_are_spent_before_degrading(server: FakeLLMServer) -> None:
    server.responder = Reply(status=500, headers={"retry-after-ms": "1"})
    result = await rerank(Reranker("listwise", backend_for("openai", server, max_retries=2)))
    assert len(server.requests) == 3  # first try + 2 retries
    assert result.degraded and result.usage.failed_calls == 1


async def test_one_failing_document_only_loses_its_own_score(server: FakeLLMServer) -> None:
    def responder(request: ServerRequest) -> Reply | str:
        return Reply(status=500) if "Dogs bark at strangers" in request.user else judge(request)

    server.responder = responder
    result = await rerank(Reranker("pointwise", backend_for("openai", server)))
    assert result.degraded and result.usage.failed_calls == 1
    assert result.indices[-1] == 1 and result[-1].score is None
    assert [d.code for d in result[-1].diagnostics] == ["call_failed"]
    assert result.indices[:3] == [i for i in BEST_FIRST if i != 1]


async def test_hybrid_prefilter_failure_keeps_going_in_input_order(server: FakeLLMServer) -> None:
    class Broken:
        def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
            raise RuntimeError("model file is corrupt")

    result = await rerank(Reranker(Hybrid(cross_encoder=Broken(), keep=4), backend_for("openai", server)))
    assert result.degraded and result.indices == BEST_FIRST
    assert any(d.code == "prefilter_failed" and "corrupt" in d.message for d in result.diagnostics)
    with pytest.raises(BackendError, match="corrupt"):
        await rerank(Reranker(Hybrid(cross_encoder=Broken()), backend_for("openai", server), on_error="raise"))


# --- timeouts and connection resets -------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_call_timeout_degrades_or_raises(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(text="[1] > [2]", delay=2.0)
    started = time.perf_counter()
    result = await rerank(Reranker("listwise", backend_for(api, server, timeout=0.2)))
    assert time.perf_counter() - started < 1.5
    assert result.degraded and result.indices == INPUT_ORDER
    assert "BackendTimeoutError" in failed_messages(result)[0]
    with pytest.raises(BackendTimeoutError):
        await rerank(Reranker("listwise", backend_for(api, server, timeout=0.2), on_error="raise"))


@pytest.mark.parametrize("api", APIS)
async def test_connection_reset_degrades_or_raises(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(reset=True)
    result = await rerank(Reranker("pairwise", backend_for(api, server)))
    assert result.degraded and result.indices == INPUT_ORDER
    assert all(m.startswith("BackendError") for m in failed_messages(result))
    with pytest.raises(BackendError) as info:
        await rerank(Reranker("pairwise", backend_for(api, server), on_error="raise"))
    assert info.value.status_code is None


async def test_reset_then_success_is_retried(server: FakeLLMServer) -> None:
    server.responder = FailFirst(1, Reply(reset=True))
    result = await rerank(Reranker("listwise", backend_for("anthropic", server, max_retries=1)))
    assert len(server.requests) == 2
    assert not result.degraded and result.indices == BEST_FIRST


async def test_malformed_body_degrades(server: FakeLLMServer) -> None:
    server.responder = Reply(raw_body=b'{"choices": [')
    result = await rerank(Reranker("pointwise", backend_for("openai", server)))
    assert result.degraded and result.indices == INPUT_ORDER
    assert result.usage.failed_calls == len(DOCS)


# --- a per-rerank deadline bounds the wall time ----------------------------------------------------

SLACK = 1.0  # generous for shared CI machines; the server would take 3 s


@pytest.mark.parametrize("name", ["pointwise", "pairwise", "listwise", "hybrid"])
async def test_deadline_bounds_wall_time_with_slow_server(server: FakeLLMServer, name: str) -> None:
    server.responder = Reply(text="5", delay=3.0)
    deadline = 0.3
    started = time.perf_counter()
    result = await rerank(Reranker(strategies()[name], backend_for("openai", server), deadline=deadline))
    elapsed = time.perf_counter() - started
    assert elapsed < deadline + SLACK
    assert result.degraded
    assert result.indices == (CE_ORDER if name == "hybrid" else INPUT_ORDER)
    assert any(d.code == "deadline_exceeded" for d in result.diagnostics)
    assert result.usage.wall_seconds < deadline + SLACK


async def test_deadline_raises_when_asked(server: FakeLLMServer) -> None:
    server.responder = Reply(text="5", delay=3.0)
    started = time.perf_counter()
    with pytest.raises(DeadlineExceededError):
        await rerank(Reranker("pointwise", backend_for("anthropic", server), deadline=0.3, on_error="raise"))
    assert time.perf_counter() - started < 0.3 + SLACK


async def test_deadline_across_sequential_rounds(server: FakeLLMServer) -> None:
    """Pairwise sort runs rounds one after another; rounds after the deadline are not even sent."""

    def slow_judge(request: ServerRequest) -> Reply:
        return Reply(text=judge(request).text, delay=0.12)

    server.responder = slow_judge
    docs = [f"document number {i} about dogs" for i in range(12)]
    deadline = 0.5
    started = time.perf_counter()
    result = await rerank(Reranker(Pairwise(mode="sort"), backend_for("openai", server), deadline=deadline), docs)
    elapsed = time.perf_counter() - started
    assert elapsed < deadline + SLACK
    assert result.degraded and sorted(result.indices) == list(range(12))
    assert any(d.code == "deadline_exceeded" for d in result.diagnostics)
    assert result.usage.calls >= 1  # the first rounds did complete


async def test_deadline_not_hit_is_not_degraded(server: FakeLLMServer) -> None:
    result = await rerank(Reranker("listwise", backend_for("openai", server), deadline=5.0))
    assert not result.degraded and result.indices == BEST_FIRST
    assert not any(d.code == "deadline_exceeded" for d in result.diagnostics)


def test_sync_rerank_with_deadline_returns_in_time(server: FakeLLMServer) -> None:
    server.responder = Reply(text="[1] > [2]", delay=3.0)
    started = time.perf_counter()
    result = Reranker("listwise", backend_for("openai", server), deadline=0.3).rerank(QUERY, DOCS)
    assert time.perf_counter() - started < 0.3 + SLACK
    assert result.degraded and result.indices == INPUT_ORDER
