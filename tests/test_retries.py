"""Retries by failure, not by address, and a first contact that is loud: through the real SDKs and
the public API, against loopback servers (which count as servers you host).

The rule (``llmrerank.backends.sdk.retry_wait``): 408, 409, 429, every 5xx and connections refused,
reset or closed without an answer are retried wherever the server is; a timed-out call to a server
you host is not. A backend that has never had an answer and cannot connect raises
``ServerUnreachableError`` naming the address; once it has answered, a failure to connect degrades.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from llmrerank import Reranker
from llmrerank.errors import BackendError, BackendTimeoutError, PermanentBackendError, ServerUnreachableError
from testkit.server import FakeLLMServer, Reply, ScriptedResponder, overlap_responder

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from sdk_support import backend_for, rerank_and_close

from llmrerank.backends.sdk import retry_wait

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night because they hear noises.", "Birds sing at dawn."]
APIS = ["openai", "anthropic"]
GUARD = 60.0


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(overlap_responder) as srv:
        yield srv


async def rerank(reranker: Reranker) -> Any:
    return await rerank_and_close(reranker, QUERY, DOCS, GUARD)


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- retries by failure, not by address ---------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_a_local_server_is_retried_through_429_and_500_with_default_settings(
    server: FakeLLMServer, api: str
) -> None:
    good = overlap_responder
    script = ScriptedResponder([Reply(status=429, headers={"retry-after": "0"}), Reply(status=500)])
    server.responder = lambda request: script(request) if script.queue else good(request)
    result = await rerank(Reranker("listwise", backend_for(api, server.url)))
    assert result.status == "reranked", result.summary()
    assert result.indices[0] == 1
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [503, 529])
async def test_overloaded_answers_are_retried(server: FakeLLMServer, status: int) -> None:
    script = ScriptedResponder([Reply(status=status, headers={"retry-after": "0"})])
    server.responder = lambda request: script(request) if script.queue else overlap_responder(request)
    result = await rerank(Reranker("listwise", backend_for("anthropic", server.url)))
    assert result.status == "reranked" and len(server.requests) == 2


async def test_a_timeout_to_a_local_server_is_not_retried(server: FakeLLMServer) -> None:
    server.responder = Reply(text="[2] > [1] > [3]", delay=3.0)
    backend = backend_for("openai", server.url, timeout=0.5)
    assert backend.max_retries == 2
    result = await rerank(Reranker("listwise", backend))
    assert result.status == "fallback"
    posts = [r for r in server.requests if r.method == "POST"]
    assert len(posts) == 1  # the server is still working on the first: no second copy


async def test_a_permanent_error_is_not_retried(server: FakeLLMServer) -> None:
    server.responder = Reply(status=401, text="bad key")
    with pytest.raises(PermanentBackendError):
        await rerank(Reranker("listwise", backend_for("openai", server.url)))
    assert len(server.requests) == 1


async def test_x_should_retry_false_is_obeyed(server: FakeLLMServer) -> None:
    server.responder = Reply(status=500, headers={"x-should-retry": "false"})
    result = await rerank(Reranker("listwise", backend_for("openai", server.url)))
    assert result.status == "fallback" and len(server.requests) == 1


async def test_retries_stop_at_max_retries(server: FakeLLMServer) -> None:
    server.responder = Reply(status=502, headers={"retry-after": "0"})
    result = await rerank(Reranker("listwise", backend_for("openai", server.url, max_retries=1)))
    assert result.status == "fallback" and len(server.requests) == 2
    server.clear()
    result = await rerank(Reranker("listwise", backend_for("openai", server.url)))
    assert len(server.requests) == 3  # the default: two retries


class APIConnectionError(Exception):
    """Named like the SDKs' transport error, which the rule reads by name (both SDKs have one)."""


class APITimeoutError(APIConnectionError):
    pass


def test_the_rule_retries_timeouts_on_hosted_apis_only() -> None:
    assert retry_wait(APITimeoutError(), 0, 2, local=True) is None
    wait = retry_wait(APITimeoutError(), 0, 2, local=False)
    assert wait is not None and 0 < wait <= 0.5
    assert retry_wait(APITimeoutError(), 2, 2, local=False) is None  # retries spent
    assert retry_wait(APIConnectionError(), 0, 2, local=True) is not None  # a reset, a refusal
    assert retry_wait(ValueError(), 0, 2, local=False) is None


# --- the first contact is loud -------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_a_wrong_base_url_raises_naming_the_address(api: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    reranker = Reranker("listwise", backend_for(api, url))
    with pytest.raises(ServerUnreachableError) as info:
        reranker.rerank(QUERY, DOCS)
    assert url in str(info.value) and info.value.url is not None and url in info.value.url
    assert info.value.permanent
    # degrade_all degrades on it, as on every permanent error, and says so
    result = Reranker("listwise", backend_for(api, url), on_error="degrade_all").rerank(QUERY, DOCS)
    assert result.status == "fallback"


def test_a_server_that_answered_then_went_away_degrades() -> None:
    with FakeLLMServer(overlap_responder) as srv:
        url = srv.url
        backend = backend_for("openai", url, max_retries=0)
        reranker = Reranker("listwise", backend)
        assert reranker.rerank(QUERY, DOCS).status == "reranked"
        reranker.close()  # no pooled connection: the next call must connect anew
    result = reranker.rerank(QUERY, DOCS)
    assert result.status == "fallback"
    message = next(d.message for d in result.diagnostics if d.code == "call_failed")
    assert url in message  # the failed call names the server's address
    reranker.close()


async def test_a_reset_names_the_server(server: FakeLLMServer) -> None:
    server.responder = Reply(reset=True)
    with pytest.raises(BackendError) as info:
        await rerank(Reranker("listwise", backend_for("openai", server.url, max_retries=0), on_error="raise"))
    assert f"127.0.0.1:{server.port}" in str(info.value)
    assert not isinstance(info.value, BackendTimeoutError)
