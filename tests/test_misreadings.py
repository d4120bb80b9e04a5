"""What a server or a model says that is not what it seems: empty completions, usage garbage,
log-probs no probability has, a score label that claims log-probs the model never gave.

Through the public API against the loopback server (real SDKs), as a user would meet them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from llmrerank import MemoryCache, Pointwise, Reranker
from llmrerank.errors import InvalidResponseError
from llmrerank.testing import FakeBackend
from testkit.server import FakeLLMServer, Reply, ServerRequest

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend

QUERY = "aurora borealis"
TEXTS = ["The aurora borealis lights the polar sky.", "A recipe for bread."]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def openai_body(message: dict[str, object], usage: dict[str, object] | None = None, **choice: object) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop", **choice}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }
    return json.dumps(body).encode()


def anthropic_body(content: list[dict[str, object]], usage: dict[str, object] | None = None) -> bytes:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": "end_turn",
        "usage": usage or {"input_tokens": 10, "output_tokens": 1},
    }
    return json.dumps(body).encode()


def backend_for(api: str, srv: FakeLLMServer) -> OpenAIBackend | AnthropicBackend:
    if api == "openai":
        return OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=0)
    return AnthropicBackend("claude-test", base_url=srv.anthropic_base_url, api_key="sk-test", max_retries=0)


EMPTY = {
    "openai": openai_body({"content": None}),
    "anthropic": anthropic_body([]),
}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_completion_without_content_is_a_failed_call_and_never_cached(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(raw_body=EMPTY[api])
    cache = MemoryCache()
    with backend_for(api, server) as backend:
        result = Reranker(Pointwise(method="generate"), backend, cache=cache).rerank(QUERY, TEXTS)
        assert result.status == "fallback" and result.degraded_reasons == ("call_failed",)
        assert result.usage.failed_calls == 2 and result.usage.cached_calls == 0
        assert len(cache) == 0
        with pytest.raises(InvalidResponseError, match="no content"):
            Reranker(Pointwise(method="generate"), backend, cache=cache, on_error="raise").rerank(QUERY, TEXTS)
        # The next rerank asks again, and a real answer is read (and cached) then.
        server.responder = "7"
        again = Reranker(Pointwise(method="generate"), backend, cache=cache).rerank(QUERY, TEXTS)
        assert again.status == "reranked" and again.usage.cached_calls == 0 and len(cache) == 2


@pytest.mark.parametrize(
    "message",
    [
        {"content": None, "refusal": "I can't help with that."},
        {"content": None, "reasoning_content": "Let me think about the aurora..."},
    ],
)
def test_a_refusal_or_thinking_without_content_is_still_an_answer(server: FakeLLMServer, message: dict) -> None:
    finish = "length" if "reasoning_content" in message else "stop"
    server.responder = Reply(raw_body=openai_body(message, finish_reason=finish))
    with backend_for("openai", server) as backend:
        result = Reranker(Pointwise(method="generate"), backend).rerank(QUERY, TEXTS)
    assert result.usage.failed_calls == 0 and result.degraded_reasons == ("unreadable_answer",)


def test_thinking_blocks_alone_are_still_an_answer(server: FakeLLMServer) -> None:
    server.responder = Reply(raw_body=anthropic_body([{"type": "thinking", "thinking": "hmm", "signature": "s"}]))
    with backend_for("anthropic", server) as backend:
        result = Reranker(Pointwise(method="generate"), backend).rerank(QUERY, TEXTS)
    assert result.usage.failed_calls == 0 and result.degraded_reasons == ("unreadable_answer",)


@pytest.mark.parametrize(
    ("api", "usage"),
    [
        ("openai", {"prompt_tokens": "abc", "completion_tokens": -5, "total_tokens": None}),
        ("openai", {"prompt_tokens": 1.5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": "x"}}),
        ("anthropic", {"input_tokens": "abc", "output_tokens": -5, "cache_read_input_tokens": -1}),
    ],
)
def test_usage_garbage_keeps_the_answer_and_counts_as_unknown(
    server: FakeLLMServer, api: str, usage: dict[str, object]
) -> None:
    text = {"type": "text", "text": "8"}
    body = openai_body({"content": "8"}, usage) if api == "openai" else anthropic_body([text], usage)
    server.responder = Reply(raw_body=body)
    with backend_for(api, server) as backend:
        result = Reranker(Pointwise(method="generate"), backend).rerank(QUERY, TEXTS)
    assert result.status == "reranked" and result.usage.failed_calls == 0
    assert [d.score for d in result] == [8.0, 8.0]
    usage_seen = result.usage
    assert usage_seen.prompt_tokens == 0 and usage_seen.cached_prompt_tokens == 0
    assert usage_seen.completion_tokens in (0, 4)  # -5 is unknown; 2 per call is a real count


def test_token_count_takes_whole_numbers_only() -> None:
    from llmrerank.backends.base import token_count

    assert [token_count(v) for v in (12, 12.0, 0, None, "12", -3, 1.5, math.inf, math.nan, True)] == [
        12,
        12,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]


def logprob_reply(text: str, top: dict[str, float]) -> Reply:
    return Reply(text=text, top_logprobs=top)


@pytest.mark.parametrize(
    ("method", "text", "top", "expected"),
    [
        ("expected", "9", {"9": math.inf, "3": -2.0, "4": -2.5, "6": -3.0}, 9.0),
        ("expected", "9", {"9": math.nan, "3": -2.0}, 9.0),
        ("expected", "9", {"9": 2.0, "3": -2.0}, 9.0),
        ("yes_no", "Yes", {"Yes": math.inf, "No": -3.0}, 10.0),
    ],
)
def test_logprobs_no_probability_has_fall_back_to_the_text(
    server: FakeLLMServer, method: str, text: str, top: dict[str, float], expected: float
) -> None:
    server.responder = logprob_reply(text, top)
    with backend_for("openai", server) as backend:
        result = Reranker(Pointwise(method=method), backend).rerank(QUERY, TEXTS[:1])  # type: ignore[arg-type]
    assert result.status == "reranked" and result[0].score == expected
    codes = [d.code for d in result[0].diagnostics]
    assert "logprobs_unusable" in codes and "score_parsed" in codes and "score_from_logprobs" not in codes
    assert result.score_kind == "relevance"


def test_good_logprobs_are_still_read(server: FakeLLMServer) -> None:
    server.responder = logprob_reply("Yes", {"Yes": -0.1, "No": -2.4})
    with backend_for("openai", server) as backend:
        result = Reranker(Pointwise(method="yes_no"), backend).rerank(QUERY, TEXTS[:1])
    assert result.score_kind == "logprob" and 8.5 < (result[0].score or 0) < 9.5
    assert "logprobs_unusable" not in {d.code for d in result.diagnostics}


def test_a_yes_no_score_read_from_the_text_is_labelled_relevance() -> None:
    backend = FakeBackend(["Yes", "No"])  # a chat model that gives no log-probs
    result = Reranker(Pointwise(method="yes_no"), backend, max_concurrency=1).rerank(QUERY, TEXTS)
    assert [d.score for d in result] == [10.0, 0.0]
    assert result.score_kind == "relevance"
    assert result.metadata(result[0])["rerank_score_kind"] == "relevance"
    with_logprobs = FakeBackend(respond=lambda p: "Yes", logprobs=lambda p: {"Yes": -0.2, "No": -1.8})
    assert Reranker(Pointwise(method="yes_no"), with_logprobs).rerank(QUERY, TEXTS).score_kind == "logprob"


def test_the_loopback_server_sends_what_it_was_told(server: FakeLLMServer) -> None:
    """The probes above depend on the raw bodies reaching the SDK as written."""
    server.responder = Reply(raw_body=EMPTY["openai"])
    with backend_for("openai", server) as backend:
        Reranker(Pointwise(method="generate"), backend).rerank(QUERY, TEXTS[:1])
    request: ServerRequest = server.requests[-1]
    assert request.path.endswith("/chat/completions")
