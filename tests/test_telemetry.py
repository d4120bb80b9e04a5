"""OpenTelemetry spans from the library itself (llmrerank.telemetry): one span per rerank with a
child per LLM call (GenAI semantic conventions), recorded with the SDK's InMemorySpanExporter, for a
reranked, a degraded, a raising and a cached rerank; and nothing breaks without an SDK configured."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmrerank import MemoryCache, Pointwise, QueryLikelihood, Reranker, telemetry
from llmrerank.errors import BackendError
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.server import FakeLLMServer, Reply, overlap_responder

pytest.importorskip("openai")
from llmrerank.backends.openai import OpenAIBackend

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The library's tracer taken from a TracerProvider of its own (not the process-wide one)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(telemetry, "tracer", provider.get_tracer("llmrerank"))
    yield memory
    provider.shutdown()


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(overlap_responder) as server:
        yield server


def openai(server: FakeLLMServer) -> OpenAIBackend:
    return OpenAIBackend("gpt-test", base_url=server.base_url, api_key="sk-test", max_retries=0, logprobs=False)


def tree(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one rerank span and its children (every other span must be one of them)."""
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name.startswith("rerank ")]
    children = [s for s in spans if s is not root]
    assert root.context is not None
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in children)
    assert all(s.context is not None and s.context.trace_id == root.context.trace_id for s in children)
    return root, children


def test_a_rerank_is_a_span_with_a_child_per_llm_call(exporter: InMemorySpanExporter, llm: FakeLLMServer) -> None:
    result = Reranker(Pointwise(method="generate"), openai(llm)).rerank(QUERY, DOCS, top_k=2)
    assert result.status == "reranked" and result.usage.calls == 3
    root, calls = tree(exporter)
    assert root.name == "rerank pointwise" and root.kind == SpanKind.INTERNAL
    assert root.status.status_code == StatusCode.UNSET
    attributes = dict(root.attributes or {})
    assert attributes == {
        "llmrerank.strategy": "pointwise",
        "llmrerank.provider": "openai",
        "llmrerank.request.model": "gpt-test",
        "llmrerank.response.model": "gpt-test",
        "llmrerank.documents": 3,
        "llmrerank.top_k": 2,
        "llmrerank.status": "reranked",
        "llmrerank.degraded": False,
        "llmrerank.degraded_reasons": (),
        "llmrerank.score_kind": result.score_kind,
        "llmrerank.calls": 3,
        "llmrerank.cached_calls": 0,
        "llmrerank.failed_calls": 0,
        "llmrerank.usage.input_tokens": result.usage.prompt_tokens,
        "llmrerank.usage.output_tokens": result.usage.completion_tokens,
    }
    assert len(calls) == 3 and {s.name for s in calls} == {"chat gpt-test"}
    port = int(llm.base_url.rsplit(":", 1)[1].split("/")[0])
    for span in calls:
        assert span.kind == SpanKind.CLIENT and span.status.status_code == StatusCode.UNSET
        a = dict(span.attributes or {})
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "openai"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "gpt-test"
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == port
        assert a["gen_ai.request.max_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert "error.type" not in a
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in calls) == result.usage.prompt_tokens  # type: ignore[index]
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in calls) == result.usage.completion_tokens  # type: ignore[index]
    assert len(llm.requests) == 3
    text = repr([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert QUERY not in text and not any(doc in text for doc in DOCS)  # no query or document text


def test_a_degraded_rerank_says_so_on_its_span_and_the_failed_calls(
    exporter: InMemorySpanExporter, llm: FakeLLMServer
) -> None:
    llm.responder = Reply(text="upstream is down", status=503)
    result = Reranker("listwise", openai(llm)).rerank(QUERY, DOCS)
    assert result.degraded and result.status == "fallback"
    root, calls = tree(exporter)
    a = dict(root.attributes or {})
    assert a["llmrerank.status"] == "fallback" and a["llmrerank.degraded"] is True
    assert a["llmrerank.degraded_reasons"] == ("call_failed",) == result.degraded_reasons
    assert a["llmrerank.failed_calls"] == 1 and a["llmrerank.usage.input_tokens"] == 0
    assert root.status.status_code == StatusCode.UNSET  # the rerank returned: degraded, not failed
    (call,) = calls
    assert call.status.status_code == StatusCode.ERROR and "upstream is down" in (call.status.description or "")
    assert call.attributes is not None and call.attributes["error.type"] == "BackendError"
    assert call.attributes["http.response.status_code"] == 503
    assert "gen_ai.usage.input_tokens" not in call.attributes


def test_a_rerank_that_raises_ends_its_span_with_the_error(exporter: InMemorySpanExporter, llm: FakeLLMServer) -> None:
    llm.responder = Reply(text="upstream is down", status=503)
    with pytest.raises(BackendError):
        Reranker("listwise", openai(llm), on_error="raise").rerank(QUERY, DOCS)
    root, (call,) = tree(exporter)
    for span in (root, call):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == "BackendError"
    assert [e.name for e in root.events] == ["exception"]


def test_a_call_cut_by_the_deadline_is_a_cancelled_span(exporter: InMemorySpanExporter) -> None:
    backend = FakeBackend(respond=overlap_judge, delay=5)
    result = Reranker("listwise", backend, deadline=0.1).rerank(QUERY, DOCS)
    assert result.degraded and "deadline_exceeded" in result.degraded_reasons
    root, (call,) = tree(exporter)
    assert call.status.status_code == StatusCode.ERROR and call.attributes is not None
    assert call.attributes["error.type"] == "cancelled"
    assert root.attributes is not None and "deadline_exceeded" in root.attributes["llmrerank.degraded_reasons"]  # type: ignore[operator]


def test_cached_answers_make_no_call_spans(exporter: InMemorySpanExporter) -> None:
    reranker = Reranker(Pointwise(method="generate"), FakeBackend(respond=overlap_judge), cache=MemoryCache())
    reranker.rerank(QUERY, DOCS)
    exporter.clear()
    reranker.rerank(QUERY, DOCS)
    root, calls = tree(exporter)
    assert calls == []
    assert root.attributes is not None
    assert root.attributes["llmrerank.cached_calls"] == 3 and root.attributes["llmrerank.calls"] == 0


def test_likelihood_requests_are_text_completions(exporter: InMemorySpanExporter) -> None:
    backend = FakeBackend(likelihood=lambda context, continuation: -float(len(context) % 7), preferred_strategy="x")
    Reranker(QueryLikelihood(), backend).rerank(QUERY, DOCS)
    _, calls = tree(exporter)
    assert calls and all(s.name == "text_completion fake-model" for s in calls)
    assert all((s.attributes or {})["gen_ai.operation.name"] == "text_completion" for s in calls)


def test_the_rerank_span_joins_the_callers_trace(exporter: InMemorySpanExporter) -> None:
    outer_tracer = telemetry.tracer
    reranker = Reranker("listwise", FakeBackend(respond=overlap_judge))
    with outer_tracer.start_as_current_span("handle request") as outer:
        reranker.rerank(QUERY, DOCS)  # the blocking API, on llmrerank's background loop

        async def concurrently() -> None:
            await asyncio.gather(*(reranker.arerank(QUERY, DOCS) for _ in range(2)))

        asyncio.run(concurrently())
    reranks = [s for s in exporter.get_finished_spans() if s.name == "rerank listwise"]
    assert len(reranks) == 3
    assert all(s.parent is not None and s.parent.span_id == outer.get_span_context().span_id for s in reranks)
    ids = {s.context.span_id for s in reranks if s.context is not None}
    calls = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert len(calls) == 3 and {s.parent.span_id for s in calls if s.parent is not None} == ids


GLOBAL = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from llmrerank import Reranker
from llmrerank.testing import FakeBackend, overlap_judge

reranker = Reranker("listwise", FakeBackend(respond=overlap_judge))
before = reranker.rerank("solar panels", ["bread", "solar panels"])  # no SDK configured: no-op spans
assert before.indices == [1, 0] and not before.degraded
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # what an application does at start-up
after = reranker.rerank("solar panels", ["bread", "solar panels"])
assert after.indices == [1, 0]
print(sorted(s.name for s in exporter.get_finished_spans()))
"""


def test_spans_reach_the_provider_an_application_sets_and_none_before() -> None:
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": f"{ROOT / 'core'}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['chat fake-model', 'rerank listwise']"


def test_without_the_api_spans_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "tracer", None)
    result = Reranker("listwise", FakeBackend(respond=overlap_judge)).rerank(QUERY, DOCS)
    assert result.indices == [1, 0, 2] and not result.degraded
    assert telemetry.start_call_span(FakeBackend(), []) is telemetry.NO_SPAN
    assert not trace.get_current_span().is_recording()


def test_spans_of_any_tracer_keep_the_reranks_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "tracer", trace.NoOpTracer())
    result: Any = Reranker("listwise", FakeBackend(respond=overlap_judge)).rerank(QUERY, DOCS)
    assert result.indices == [1, 0, 2]
