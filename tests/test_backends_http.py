"""The OpenAI and Anthropic backends, with the real SDKs, against FakeLLMServer on loopback."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from llmrerank.errors import (
    BackendError,
    BackendTimeoutError,
    InvalidResponseError,
    MissingDependencyError,
    RateLimitError,
)
from testkit.server import FakeLLMServer, Reply, ScriptedResponder, ServerRequest

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.protocol import Prompt

PROMPT = Prompt(system="You judge relevance.", user="Query: aurora\nIs it relevant?", max_tokens=7)
APIS = ["openai", "anthropic"]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def backend_for(api: str, srv: FakeLLMServer, **options: object) -> OpenAIBackend | AnthropicBackend:
    if api == "openai":
        return OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", **options)  # type: ignore[arg-type]
    return AnthropicBackend("claude-test", base_url=srv.anthropic_base_url, api_key="sk-ant-test", **options)  # type: ignore[arg-type]


async def answer(backend: OpenAIBackend | AnthropicBackend, prompt: Prompt = PROMPT):  # type: ignore[no-untyped-def]
    try:
        return await backend.generate(prompt)
    finally:
        await backend.aclose()


@pytest.mark.parametrize("api", APIS)
async def test_text_round_trip(server: FakeLLMServer, api: str) -> None:
    server.responder = "Relevant: 7"
    completion = await answer(backend_for(api, server))
    assert completion.text == "Relevant: 7"
    (request,) = server.requests
    assert request.api == api
    assert request.model == ("gpt-test" if api == "openai" else "claude-test")
    assert request.system == PROMPT.system
    assert request.user == PROMPT.user
    assert request.max_tokens == 7
    assert not request.logprobs
    if api == "openai":
        assert request.body["temperature"] == 0.0
    else:  # the current Anthropic API version rejects sampling parameters
        assert "temperature" not in request.body


@pytest.mark.parametrize("api", APIS)
async def test_token_usage(server: FakeLLMServer, api: str) -> None:
    server.responder = "x" * 40
    completion = await answer(backend_for(api, server))
    assert completion.prompt_tokens == (len(PROMPT.system) + len(PROMPT.user)) // 4 + 1
    assert completion.completion_tokens == 11


async def test_openai_logprobs_map_to_choices(server: FakeLLMServer) -> None:
    server.responder = Reply(text=" Yes", top_logprobs={" Yes": -0.1, "No": -2.3, "yes": -3.0, "Maybe": -4.0})
    backend = backend_for("openai", server)
    assert backend.supports_logprobs
    completion = await answer(backend, Prompt(system="s", user="u", choices=("Yes", "No")))
    (request,) = server.requests
    assert request.logprobs and request.top_logprobs == 20 and request.max_tokens == 1
    assert completion.choice_logprobs is not None
    assert set(completion.choice_logprobs) == {"Yes", "No"}
    assert completion.choice_logprobs["Yes"] == pytest.approx(math.log(math.exp(-0.1) + math.exp(-3.0)))
    assert completion.choice_logprobs["No"] == pytest.approx(-2.3)
    assert completion.text == " Yes"


async def test_openai_missing_logprobs_still_gives_text(server: FakeLLMServer) -> None:
    server.responder = Reply(text="No")  # no top_logprobs: the server answers "logprobs": null
    completion = await answer(backend_for("openai", server), Prompt(system="s", user="u", choices=("Yes", "No")))
    assert completion.text == "No"
    assert completion.choice_logprobs is None


async def test_openai_logprobs_off(server: FakeLLMServer) -> None:
    backend = backend_for("openai", server, logprobs=False)
    assert not backend.supports_logprobs
    await answer(backend, Prompt(system="s", user="u", max_tokens=5, choices=("Yes", "No")))
    (request,) = server.requests
    assert not request.logprobs and "logprobs" not in request.body and request.max_tokens == 5


@pytest.mark.parametrize("api", APIS)
async def test_rate_limit_without_retries(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(status=429, headers={"retry-after": "7"})
    with pytest.raises(RateLimitError) as info:
        await answer(backend_for(api, server, max_retries=0))
    assert info.value.status_code == 429
    assert info.value.retry_after == 7.0
    assert info.value.backend == api
    assert len(server.requests) == 1


@pytest.mark.parametrize("api", APIS)
async def test_sdk_retries_rate_limit(server: FakeLLMServer, api: str) -> None:
    server.responder = ScriptedResponder([Reply(status=429, headers={"retry-after": "0.01"}), "fine"])
    completion = await answer(backend_for(api, server, max_retries=1))
    assert completion.text == "fine"
    assert len(server.requests) == 2


@pytest.mark.parametrize("api", APIS)
async def test_server_error(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(status=500)
    with pytest.raises(BackendError) as info:
        await answer(backend_for(api, server, max_retries=0))
    assert type(info.value) is BackendError
    assert info.value.status_code == 500


async def test_anthropic_overloaded_is_rate_limit(server: FakeLLMServer) -> None:
    server.responder = Reply(status=529, headers={"retry-after": "3"})
    with pytest.raises(RateLimitError) as info:
        await answer(backend_for("anthropic", server, max_retries=0))
    assert info.value.status_code == 529
    assert info.value.retry_after == 3.0


@pytest.mark.parametrize("api", APIS)
async def test_timeout(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(text="late", delay=2.0)
    started = time.perf_counter()
    with pytest.raises(BackendTimeoutError):
        await answer(backend_for(api, server, timeout=0.3, max_retries=0))
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize("api", APIS)
async def test_connection_reset(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(reset=True)
    with pytest.raises(BackendError) as info:
        await answer(backend_for(api, server, max_retries=0))
    assert info.value.status_code is None


@pytest.mark.parametrize("api", APIS)
async def test_malformed_json(server: FakeLLMServer, api: str) -> None:
    server.responder = Reply(raw_body=b'{"choices": [')
    with pytest.raises(BackendError):
        await answer(backend_for(api, server, max_retries=0))


async def test_openai_empty_choices_is_not_an_answer(server: FakeLLMServer) -> None:
    server.responder = Reply(
        raw_body=b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}'
    )
    with pytest.raises(InvalidResponseError, match="instead of a chat completion"):
        await answer(backend_for("openai", server))


async def test_openai_null_content_is_not_an_answer(server: FakeLLMServer) -> None:
    body = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "stop"}]}'
    server.responder = Reply(raw_body=body)
    with pytest.raises(InvalidResponseError, match="no content"):
        await answer(backend_for("openai", server))


async def test_openai_from_environment(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    await answer(OpenAIBackend())
    (request,) = server.requests
    assert request.headers["authorization"] == "Bearer sk-from-env"
    assert request.model == "gpt-4o-mini"


async def test_anthropic_from_environment(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_base_url)
    await answer(AnthropicBackend())
    (request,) = server.requests
    # anthropic>=2 sends the key as a bearer token; older versions used x-api-key
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    assert key == "sk-ant-from-env"
    assert request.model == "claude-haiku-4-5"


@pytest.mark.parametrize("api", APIS)
def test_one_backend_across_event_loops(server: FakeLLMServer, api: str) -> None:
    backend = backend_for(api, server)

    async def call() -> str:
        return (await backend.generate(PROMPT)).text  # no aclose: the next loop must not reuse this client

    assert asyncio.run(call()) == "OK"
    assert asyncio.run(call()) == "OK"
    assert asyncio.run(answer(backend)).text == "OK"
    assert len(server.requests) == 3


@pytest.mark.parametrize("api", APIS)
async def test_given_client_is_used_and_left_open(server: FakeLLMServer, api: str) -> None:
    if api == "openai":
        import openai

        client = openai.AsyncOpenAI(api_key="k", base_url=server.base_url)
        backend: OpenAIBackend | AnthropicBackend = OpenAIBackend(client=client)
    else:
        import anthropic

        client = anthropic.AsyncAnthropic(api_key="k", base_url=server.anthropic_base_url)
        backend = AnthropicBackend(client=client)
    await answer(backend)
    assert not client.is_closed()
    await client.close()
    assert len(server.requests) == 1


async def test_concurrent_requests(server: FakeLLMServer) -> None:
    server.latency = 0.2
    backend = backend_for("openai", server)
    started = time.perf_counter()
    try:
        results = await backend.generate_batch([PROMPT] * 20)
    finally:
        await backend.aclose()
    assert all(not isinstance(r, BaseException) and r.text == "OK" for r in results)
    assert server.max_in_flight > 1
    assert time.perf_counter() - started < 2.0


def test_missing_openai_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "llmrerank\[openai\]"'):
        OpenAIBackend()


def test_missing_anthropic_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "llmrerank\[anthropic\]"'):
        AnthropicBackend()


def test_server_records_and_stops_cleanly() -> None:
    before = threading.active_count()
    seen: list[ServerRequest] = []

    def responder(request: ServerRequest) -> str:
        seen.append(request)
        return "hi"

    with FakeLLMServer(responder) as srv:
        backend = backend_for("openai", srv)
        assert asyncio.run(answer(backend)).text == "hi"
        leftover = backend_for("anthropic", srv)  # its keep-alive connection stays open until stop()

        async def call() -> str:
            return (await leftover.generate(PROMPT)).text

        assert asyncio.run(call()) == "hi"
    assert [r.api for r in seen] == ["openai", "anthropic"]
    assert threading.active_count() == before


def test_scripted_responder_exhausted() -> None:
    with FakeLLMServer(ScriptedResponder(["one"], repeat_last=False)) as srv:
        backend = backend_for("openai", srv, max_retries=0)
        assert asyncio.run(answer(backend)).text == "one"
        with pytest.raises(BackendError) as info:
            asyncio.run(answer(backend))
    assert info.value.status_code == 500
    assert len(srv.errors) == 1


def test_models_endpoint(server: FakeLLMServer) -> None:
    import openai

    client = openai.OpenAI(api_key="k", base_url=server.base_url)
    try:
        assert [m.id for m in client.models.list()] == ["fake-model"]
    finally:
        client.close()


def test_pointwise_expected_score_from_openai_logprobs(server: FakeLLMServer) -> None:
    """A first token "10" also starts with "1": the expected score must not count it twice."""
    from llmrerank import Pointwise, Reranker

    def responder(request: ServerRequest) -> Reply:
        if "borealis" in request.user:
            return Reply(text="10", top_logprobs={"10": math.log(0.5), "1": math.log(0.25), " 7": math.log(0.25)})
        return Reply(text="2", top_logprobs={"2": math.log(0.9), "3": math.log(0.1)})

    server.responder = responder
    reranker = Reranker(Pointwise(method="expected"), backend_for("openai", server))
    result = reranker.rerank("aurora", ["trees and roots", "the aurora borealis"])
    assert result.indices == [1, 0]
    assert result.score_kind == "logprob"
    assert result[0].score == pytest.approx(10 * 0.5 + 1 * 0.25 + 7 * 0.25)
    assert result[1].score == pytest.approx(2 * 0.9 + 3 * 0.1)
    assert all(request.logprobs and request.max_tokens == 2 for request in server.requests)  # "1" then "0"


def test_choice_tokens_match_at_a_word_boundary_like_the_local_backend() -> None:
    from llmrerank.backends.openai import choice_logprobs

    found = choice_logprobs([("Answer", -0.5), (" A", -1.0), ("B,", -2.0), ("10", -3.0)], ("A", "B", "1"))
    assert found == {"A": -1.0, "B": -2.0, "1": -3.0}


async def test_openai_without_any_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrerank import ConfigurationError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="cannot create the OpenAI client"):
        await OpenAIBackend().generate(PROMPT)
