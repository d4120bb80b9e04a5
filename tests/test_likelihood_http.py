"""Query likelihood through OpenAI-compatible servers: the real openai SDK against FakeLLMServer's /v1/completions."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from llmrerank import ConfigurationError, Fusion, QueryLikelihood, Reranker
from llmrerank.errors import BadRequestError, InvalidResponseError
from llmrerank.strategies.query_likelihood import QUESTION_TEMPLATE
from llmrerank.testing import overlap
from testkit.sample import QUERY
from testkit.server import FakeLLMServer, Reply, loopback_backend, toy_logprobs, toy_tokens

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend, echoed_likelihood

DOCS = [
    "The cat sat on the mat.",
    "Dogs bark at strangers.",
    "Why do dogs bark at night? Dogs bark at night because they hear noises.",
    "Night trains run late.",
]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def scorer(srv: FakeLLMServer, **options: object) -> OpenAIBackend:
    return OpenAIBackend("base-model", base_url=srv.base_url, api_key="sk-test", likelihood=True, **options)  # type: ignore[arg-type]


def toy_sum(context: str, continuation: str) -> float:
    """What the server's toy model gives the continuation's tokens after the context."""
    values = toy_logprobs(toy_tokens(context + continuation))
    count = len(toy_tokens(continuation))
    return sum(v for v in values[-count:] if v is not None)


def test_query_likelihood_over_the_completions_endpoint(server: FakeLLMServer) -> None:
    result = Reranker(QueryLikelihood(normalization="sum"), scorer(server)).rerank(QUERY, DOCS)
    expected = {i: toy_sum(QUESTION_TEMPLATE.format(document=d), " " + QUERY) for i, d in enumerate(DOCS)}
    assert {item.index: item.score for item in result} == pytest.approx(expected)
    assert result.indices[0] == 2 and not result.degraded
    assert result.usage.calls == len(DOCS) and result.usage.completion_tokens == 0
    assert result.usage.prompt_tokens == sum(len(toy_tokens(r.user)) for r in server.requests)
    for request in server.requests:
        assert request.path == "/v1/completions" and request.model == "base-model"
        assert request.body["echo"] is True and request.body["logprobs"] == 1 and request.body["max_tokens"] == 0
        assert request.user.endswith("\nQuestion: " + QUERY)


def test_the_loopback_oracle_answers_query_likelihood() -> None:
    # overlap_responder behind /v1/completions: the prompt holds no document block to spread log-probs over.
    with loopback_backend() as backend:
        result = Reranker(QueryLikelihood(normalization="sum"), backend).rerank(QUERY, DOCS)
    expected = {i: toy_sum(QUESTION_TEMPLATE.format(document=d), " " + QUERY) for i, d in enumerate(DOCS)}
    assert {item.index: item.score for item in result} == pytest.approx(expected)
    assert result.indices[0] == 2 and not result.degraded and result.usage.failed_calls == 0


def test_pmi_adds_the_empty_passage_and_fusion_works_over_http(server: FakeLLMServer) -> None:
    docs = [{"content": d, "score": s} for d, s in zip(DOCS, [9.0, 1.0, 0.0, 1.0], strict=True)]
    result = Reranker(QueryLikelihood(), scorer(server), fusion=Fusion("zscore", weight=0.5)).rerank(QUERY, docs)
    assert len(server.requests) == len(DOCS) + 1
    baseline = QUESTION_TEMPLATE.format(document="") + " " + QUERY
    assert [r.user for r in server.requests].count(baseline) == 1  # requests arrive in any order
    assert result.score_kind == "fused" and sorted(result.indices) == [0, 1, 2, 3]


def test_a_server_that_does_not_echo_fails_clearly() -> None:
    with FakeLLMServer(echo=False) as srv:  # like llama.cpp's server: generated-token log-probs only
        # Retrying cannot fix it, so it raises even with on_error="degrade" (a permanent error).
        with pytest.raises(BadRequestError, match="did not echo the prompt"):
            Reranker(QueryLikelihood(), scorer(srv)).rerank(QUERY, DOCS)
        result = Reranker(QueryLikelihood(normalization="sum"), scorer(srv), on_error="degrade_all").rerank(QUERY, DOCS)
        assert result.degraded and result.usage.failed_calls == len(DOCS) and result.status == "fallback"
        messages = [d.message for d in result.diagnostics if d.code == "call_failed"]
        assert len(messages) == len(DOCS) and all("llama.cpp" in m for m in messages)
        assert all(item.score is None and item.fallback for item in result)


def test_server_errors_raise_or_degrade_like_any_call(server: FakeLLMServer) -> None:
    server.responder = Reply(status=400, text="echo is not supported with logprobs")
    with pytest.raises(BadRequestError, match="echo is not supported"):
        Reranker(QueryLikelihood(), scorer(server, max_retries=0)).rerank(QUERY, DOCS)
    server.responder = Reply(status=503, text="upstream down")
    result = Reranker(QueryLikelihood(), scorer(server, max_retries=0)).rerank(QUERY, DOCS)
    assert result.degraded and all(item.score is None for item in result)
    assert any("upstream down" in d.message for d in result.diagnostics)


def test_backends_without_the_route_are_refused_up_front(server: FakeLLMServer) -> None:
    chat_only = OpenAIBackend("gpt-test", base_url=server.base_url, api_key="sk-test")
    with pytest.raises(ConfigurationError, match="likelihood=True"):
        Reranker("query_likelihood", chat_only)
    claude = AnthropicBackend("claude-test", base_url=server.anthropic_base_url, api_key="sk-ant-test")
    with pytest.raises(ConfigurationError, match="cannot"):
        Reranker(QueryLikelihood(), claude)
    assert not server.requests


def response(tokens: list[str], values: list[float | None], prompt_tokens: int | None = None) -> SimpleNamespace:
    logprobs = SimpleNamespace(tokens=tokens, token_logprobs=values)
    usage = SimpleNamespace(prompt_tokens=prompt_tokens if prompt_tokens is not None else len(tokens))
    return SimpleNamespace(choices=[SimpleNamespace(text="".join(tokens), logprobs=logprobs)], usage=usage)


def test_echoed_logprobs_are_cut_at_the_continuation() -> None:
    tokens = ["Question", ":", " why", " dogs", "!"]  # "!" was generated after the prompt
    values: list[float | None] = [None, -1.0, -2.0, -3.0, -9.0]
    got = echoed_likelihood(response(tokens, values, prompt_tokens=4), "Question: why dogs", " why dogs")
    assert (got.logprob, got.tokens, got.prompt_tokens) == (-5.0, 2, 4)
    # A token straddling the boundary counts in full.
    straddle = echoed_likelihood(response(["Quest", "ion: wh", "y"], [None, -1.0, -2.0]), "Question: why", "y")
    assert (straddle.logprob, straddle.tokens) == (-2.0, 1)
    wide = echoed_likelihood(response(["Quest", "ion: wh", "y"], [None, -1.0, -2.0]), "Question: why", "hy")
    assert (wide.logprob, wide.tokens) == (-3.0, 2)
    with pytest.raises(InvalidResponseError, match="do not cover"):
        echoed_likelihood(response(["Why", " dogs"], [None, -1.0]), "Why dogs", "Why dogs")
    with pytest.raises(BadRequestError, match="did not echo"):
        echoed_likelihood(response(["!"], [-1.0]), "Why dogs", " dogs")


def test_toy_model_is_an_overlap_oracle() -> None:
    contexts = [QUESTION_TEMPLATE.format(document=d) for d in DOCS]
    by_model = sorted(range(len(DOCS)), key=lambda i: -toy_sum(contexts[i], " " + QUERY))
    by_overlap = sorted(range(len(DOCS)), key=lambda i: -overlap(QUERY, DOCS[i]))
    assert by_model[0] == by_overlap[0] == 2
