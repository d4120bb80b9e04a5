"""Prefix-cache-friendly prompts: what every call of a rerank shares comes first, Anthropic's
cache_control marks a long enough system prompt, and cached prompt tokens reach ``usage``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llmrerank import BatchScore, Listwise, Pairwise, Pointwise, Reranker, Setwise, Strategy, Usage
from llmrerank.testing import FakeBackend, overlap_judge, overlap_logprobs
from testkit.server import FakeLLMServer, overlap_responder

QUERY = "how do solar panels make electricity"
DOCS = [f"Document {i} about solar panels, wind and bread, number {i}." for i in range(30)]
LONG_DOMAIN = "Prefer peer-reviewed evidence over opinion, and primary sources over summaries. " * 200

BUILT_IN: dict[str, Callable[[], Strategy]] = {
    "pointwise": lambda: Pointwise(method="generate"),
    "pointwise_expected": lambda: Pointwise(method="expected"),
    "pointwise_yes_no": lambda: Pointwise(method="yes_no"),
    "batch_score": lambda: BatchScore(batch_size=7),
    "pairwise_sort": lambda: Pairwise(mode="sort"),
    "listwise": lambda: Listwise(window=10, step=5),
    "listwise_first_token": lambda: Listwise(window=10, step=5, method="first_token"),
    "setwise": lambda: Setwise(),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_call_of_a_rerank_starts_alike_and_ends_with_its_documents(name: str) -> None:
    backend = FakeBackend(respond=overlap_judge, logprobs=overlap_logprobs)
    Reranker(BUILT_IN[name](), backend, domain="medical").rerank(QUERY, DOCS, top_k=5)
    assert len(backend.calls) > 1
    heads = {p.user[: p.user.index("<document")] for p in backend.calls}
    assert len(heads) == 1, heads  # instruction and query: the same before every call's documents
    (head,) = heads
    assert head.index("Query: ") > 0  # the instruction comes first, then the query
    assert QUERY in head
    assert len({p.system for p in backend.calls}) == 1
    for prompt in backend.calls:  # after the last document only a short answer-format line
        tail = prompt.user[prompt.user.rindex("</document>") + len("</document>") :]
        assert len(tail) < 200 and "Query" not in tail


def test_a_custom_template_keeps_its_own_order() -> None:
    backend = FakeBackend(respond=overlap_judge)
    template = "{document}\n\nQUERY={query}\nRate 0-10. {answer_format}"
    Reranker(Pointwise(method="generate", template=template), backend).rerank(QUERY, DOCS[:2])
    assert all(p.user.startswith('<document id="1">') and f"QUERY={QUERY}" in p.user for p in backend.calls)


def test_usage_adds_cached_prompt_tokens() -> None:
    total = Usage(prompt_tokens=100, cached_prompt_tokens=60) + Usage(prompt_tokens=50, cached_prompt_tokens=5)
    assert (total.prompt_tokens, total.cached_prompt_tokens) == (150, 65)


# --- Anthropic: cache_control on a long enough system prompt ---------------------------------------

anthropic = pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend, min_cacheable_tokens  # noqa: E402
from llmrerank.backends.openai import OpenAIBackend  # noqa: E402


def claude(srv: FakeLLMServer, model: str = "claude-sonnet-4-6", **options: object) -> AnthropicBackend:
    return AnthropicBackend(model, base_url=srv.anthropic_base_url, api_key="sk-test", max_retries=0, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("claude-haiku-4-5", 4096),
        ("claude-haiku-4-5-20251001", 4096),
        ("claude-opus-4-5", 4096),
        ("claude-sonnet-4-6", 2048),
        ("claude-3-5-haiku-latest", 2048),
        ("claude-sonnet-4-5", 1024),
        ("claude-opus-4-1", 1024),
        ("some-proxy-model", 1024),
    ],
)
def test_minimum_cacheable_length_by_model(model: str, tokens: int) -> None:
    assert min_cacheable_tokens(model) == tokens


def test_a_long_system_prompt_is_marked_and_its_reads_are_reported() -> None:
    with FakeLLMServer(overlap_responder, prompt_cache=True) as srv:
        result = Reranker(Listwise(window=10, step=5), claude(srv), domain=LONG_DOMAIN).rerank(QUERY, DOCS)
        requests = srv.requests
    assert len(requests) == result.usage.calls == 5
    assert all(r.cache_control == ("system",) for r in requests)
    assert all(r.body["system"][0]["cache_control"] == {"type": "ephemeral"} for r in requests)
    # The windows run one after another: the first writes the system prompt, the other four read it.
    system_tokens = len(requests[0].cache_prefix) // 4 + 1
    assert result.usage.cached_prompt_tokens == 4 * system_tokens
    assert result.usage.prompt_tokens > result.usage.cached_prompt_tokens  # the total still counts everything


@pytest.mark.parametrize(
    ("domain", "model", "options"),
    [
        pytest.param(None, "claude-sonnet-4-6", {}, id="built-in-system-prompt-too-short"),
        pytest.param("x " * 2500, "claude-haiku-4-5", {}, id="5000-chars-below-haiku-4096-tokens"),
        pytest.param(LONG_DOMAIN, "claude-sonnet-4-6", {"prompt_cache": False}, id="switched-off"),
    ],
)
def test_no_cache_control_where_it_cannot_pay(domain: str | None, model: str, options: dict[str, object]) -> None:
    with FakeLLMServer(overlap_responder, prompt_cache=True) as srv:
        result = Reranker(Listwise(window=10, step=5), claude(srv, model, **options), domain=domain).rerank(QUERY, DOCS)
        requests = srv.requests
    assert all(r.cache_control == () and isinstance(r.body["system"], str) for r in requests)
    assert result.usage.cached_prompt_tokens == 0 and result.status == "reranked"


# --- OpenAI: automatic prefix caching, reported --------------------------------------------------------


def test_openai_cached_tokens_reach_usage() -> None:
    with FakeLLMServer(overlap_responder, prompt_cache=True) as srv:
        backend = OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=0)
        result = Reranker(Listwise(window=10, step=5), backend, domain=LONG_DOMAIN).rerank(QUERY, DOCS)
        short = Reranker(Listwise(window=10, step=5), backend).rerank("another query about wind", DOCS)
    # Four of five windows reuse at least the long system prompt (OpenAI caches >= 1024 tokens).
    assert result.usage.cached_prompt_tokens >= 4 * (len(LONG_DOMAIN) // 4 // 128) * 128
    assert result.usage.cached_prompt_tokens < result.usage.prompt_tokens
    assert short.usage.cached_prompt_tokens == 0  # the built-in prompts share < 1024 tokens


def test_concurrent_calls_write_but_cannot_read_each_other() -> None:
    with FakeLLMServer(overlap_responder, prompt_cache=True, latency=0.05) as srv:
        backend = OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=0)
        reranker = Reranker(Pointwise(method="generate"), backend, domain=LONG_DOMAIN, max_concurrency=8)
        first = reranker.rerank(QUERY, DOCS[:4])  # one concurrent round: nothing cached yet
        second = reranker.rerank(QUERY, DOCS[4:8])  # the next rerank reads the shared prefix
    assert first.usage.cached_prompt_tokens == 0
    assert second.usage.cached_prompt_tokens >= 4 * 1024
