"""Results a user can trust: every result says whether it was reranked, and why not.

Through the real OpenAI and Anthropic SDKs against FakeLLMServer: responses that are not
completions, permanent and transient HTTP errors, context-length errors, partial fallbacks, and
scores that are only ever model judgments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from llmrerank import (
    ConfigurationError,
    Hybrid,
    Listwise,
    MemoryCache,
    Pairwise,
    Pointwise,
    Reranker,
    RerankResult,
)
from llmrerank.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    InvalidResponseError,
    ModelNotFoundError,
    PermanentBackendError,
    PermissionDeniedError,
    is_context_length_message,
)
from llmrerank.protocol import Prompt
from llmrerank.testing import FakeBackend, overlap_judge, overlap_logprobs
from testkit.server import FakeLLMServer, Reply, ServerRequest, overlap_responder

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend, message_text

QUERY = "how do solar panels make electricity"
DOCS = [
    "Wind turbines spin in the breeze.",
    "Solar panels make electricity from sunlight.",
    "Bread rises with yeast.",
    "Photovoltaic solar panels: how sunlight can make electricity.",
]


judge = overlap_responder


def openai(srv: FakeLLMServer, **options: object) -> OpenAIBackend:
    return OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=0, **options)  # type: ignore[arg-type]


def anthropic(srv: FakeLLMServer, **options: object) -> AnthropicBackend:
    return AnthropicBackend("claude-test", base_url=srv.anthropic_base_url, api_key="k", max_retries=0, **options)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(judge) as srv:
        yield srv


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmrerank" and r.levelno == logging.WARNING]


def assert_fallback(result: RerankResult, reason: str) -> None:
    assert result.degraded and result.status == "fallback"
    assert result.degraded_reasons == (reason,)
    assert result.indices == list(range(len(result)))
    assert all(item.fallback and item.score is None for item in result)
    assert result.score_kind == "input_order"


# --- only real completions count ------------------------------------------------------------------

NOT_COMPLETIONS = {
    "html-page": Reply(
        raw_body=b"<html><body>Down for maintenance</body></html>", headers={"content-type": "text/html"}
    ),
    "event-stream": Reply(
        raw_body=b'data: {"choices": []}\n\ndata: [DONE]\n\n', headers={"content-type": "text/event-stream"}
    ),
    "json-array": Reply(raw_body=b"[1, 2, 3]"),
    "empty-choices": Reply(raw_body=b'{"choices": []}'),
    "null-choices": Reply(raw_body=b'{"choices": null}'),
    "dict-content": Reply(
        raw_body=b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": {"text": "[2] > [1]"}}}]}'
    ),
}


@pytest.mark.parametrize("shape", sorted(NOT_COMPLETIONS))
def test_a_200_that_is_not_a_completion_is_a_failed_call_never_cached(
    server: FakeLLMServer, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    server.responder = NOT_COMPLETIONS[shape]
    cache = MemoryCache()
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = Reranker("listwise", openai(server), cache=cache).rerank(QUERY, DOCS)
    assert_fallback(result, "call_failed")
    assert result.usage.failed_calls == 1
    assert len(cache) == 0  # never stored, so never served again
    (warning,) = warnings_of(caplog)
    assert "InvalidResponseError" in warning and ("instead of a chat completion" in warning or "content" in warning)
    with pytest.raises(InvalidResponseError):
        Reranker("listwise", openai(server), on_error="raise").rerank(QUERY, DOCS)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(raw_body=b"<html>maintenance</html>", headers={"content-type": "text/html"}), id="html"),
        pytest.param(Reply(raw_body=b"[1, 2]"), id="json-array"),
        pytest.param(Reply(raw_body=b'{"id": "x"}'), id="no-content"),
    ],
)
def test_anthropic_answer_that_is_not_a_message_is_a_failed_call(server: FakeLLMServer, reply: Reply) -> None:
    server.responder = reply
    result = Reranker("listwise", anthropic(server)).rerank(QUERY, DOCS)
    assert_fallback(result, "call_failed")
    with pytest.raises(InvalidResponseError, match="instead of a message"):
        Reranker("listwise", anthropic(server), on_error="raise").rerank(QUERY, DOCS)


def test_content_given_as_text_parts_is_joined(server: FakeLLMServer) -> None:
    parts = b'[{"type": "text", "text": "[4] > "}, {"type": "text", "text": "[2] > [1] > [3]"}]'
    server.responder = Reply(
        raw_body=b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": ' + parts + b"}}]}"
    )
    result = Reranker("listwise", openai(server)).rerank(QUERY, DOCS)
    assert result.indices == [3, 1, 0, 2] and result.status == "reranked"


def test_message_text_shapes() -> None:
    assert message_text(None) == ""
    assert message_text([{"type": "reasoning", "text": "hmm"}, {"type": "text", "text": "[1]"}]) == "[1]"
    assert message_text(["[2] ", "> [1]"]) == "[2] > [1]"
    with pytest.raises(InvalidResponseError):
        message_text([{"type": "image_url", "image_url": {"url": "x"}}])
    with pytest.raises(InvalidResponseError):
        message_text(42)


# --- permanent errors raise, transient ones degrade ------------------------------------------------

PERMANENT = [
    (401, AuthenticationError, "Incorrect API key provided"),
    (403, PermissionDeniedError, "Project does not have access to model"),
    (404, ModelNotFoundError, "The model `gpt-4o-mnii` does not exist"),
    (400, BadRequestError, "Unsupported parameter: 'max_tokens'"),
]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(("status", "error", "message"), PERMANENT, ids=[str(p[0]) for p in PERMANENT])
def test_permanent_errors_raise_by_default_and_degrade_only_when_asked(
    server: FakeLLMServer,
    api: str,
    status: int,
    error: type[PermanentBackendError],
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.responder = Reply(status=status, text=message)
    make = openai if api == "openai" else anthropic
    with pytest.raises(error, match=message[:20]) as info:
        Reranker(Pointwise(method="generate"), make(server)).rerank(QUERY, DOCS)
    assert info.value.status_code == status and info.value.permanent
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = Reranker(Pointwise(method="generate"), make(server), on_error="degrade_all").rerank(QUERY, DOCS)
    assert_fallback(result, "call_failed")
    (warning,) = warnings_of(caplog)
    assert error.__name__ in warning and f"HTTP {status}" in warning and "4 of 4 calls failed" in warning


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_degrade_with_the_cause_in_the_warning(
    server: FakeLLMServer, api: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    server.responder = Reply(status=status, text="try later")
    make = openai if api == "openai" else anthropic
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = Reranker("listwise", make(server)).rerank(QUERY, DOCS)
    assert_fallback(result, "call_failed")
    (warning,) = warnings_of(caplog)
    assert f"HTTP {status}" in warning and "listwise rerank degraded (call_failed)" in warning


def test_a_permanent_error_stops_the_other_calls(server: FakeLLMServer) -> None:
    server.responder = Reply(status=401, text="bad key")
    with pytest.raises(AuthenticationError):
        Reranker(Listwise(window=2), openai(server)).rerank(QUERY, DOCS * 3)
    assert len([r for r in server.requests if r.method == "POST"]) == 1  # the later windows were not sent


def test_missing_anthropic_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    # a hosted address: a server on this machine or a private network gets a placeholder key instead
    backend = AnthropicBackend("claude-test", base_url="https://llm.example.com", max_retries=0)
    with pytest.raises(ConfigurationError, match="credentials"):
        Reranker("listwise", backend, on_error="degrade_all").rerank(QUERY, DOCS)


# --- context length ---------------------------------------------------------------------------------

CONTEXT_MESSAGES = [
    "the request exceeds the available context size, try increasing it",  # llama.cpp
    "Context size has been exceeded.",  # older llama.cpp
    "This model's maximum context length is 4096 tokens. However, you requested 5213 tokens.",  # OpenAI, vLLM
    "The decoder prompt (length 5000) is longer than the maximum model length of 4096.",  # vLLM
    "prompt is too long: 210000 tokens > 200000 maximum",  # Anthropic
]


@pytest.mark.parametrize("message", CONTEXT_MESSAGES)
def test_context_length_messages_are_recognised(message: str) -> None:
    assert is_context_length_message(message)


def test_not_every_bad_request_is_about_context() -> None:
    assert not is_context_length_message("Unsupported parameter: 'max_tokens' is not supported with this model.")


def small_context(limit: int, message: str = CONTEXT_MESSAGES[0]):  # type: ignore[no-untyped-def]
    def respond(request: ServerRequest) -> Reply | str:
        if len(request.user) > limit:
            return Reply(status=400, text=message)
        return judge(request)

    return respond


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_listwise_resends_a_window_with_documents_cut_to_half_once(api: str) -> None:
    docs = [text + " " + "filler words " * 60 for text in DOCS]
    with FakeLLMServer(small_context(2600, CONTEXT_MESSAGES[2 if api == "openai" else 4])) as srv:
        backend = openai(srv) if api == "openai" else anthropic(srv)
        result = Reranker("listwise", backend).rerank(QUERY, docs)
        first, second = [r.user for r in srv.requests if r.method == "POST"]
    assert result.status == "reranked" and result.indices[:2] == [3, 1]
    assert len(second) < len(first) * 0.7
    assert "context_shrunk" in [d.code for d in result.diagnostics]
    assert result.usage.calls == 2 and result.usage.failed_calls == 0


def test_context_error_that_shrinking_cannot_fix_raises_typed() -> None:
    with FakeLLMServer(small_context(100)) as srv:
        with pytest.raises(ContextLengthError, match="context size"):
            Reranker("listwise", openai(srv)).rerank(QUERY, DOCS)
        result = Reranker("listwise", openai(srv), on_error="degrade_all").rerank(QUERY, DOCS)
    assert_fallback(result, "call_failed")


# --- partial fallbacks are visible per document -------------------------------------------------------


def test_one_unreadable_window_marks_only_its_documents() -> None:
    docs = [f"doc {i} about solar panels electricity" if i % 2 else f"doc {i} about bread" for i in range(6)]

    def respond(prompt: Prompt) -> str:
        return "I would rather not say." if "doc 2 " in prompt.user else overlap_judge(prompt)

    result = Reranker(Listwise(window=2, step=2), FakeBackend(respond=respond)).rerank(QUERY, docs)
    assert result.status == "partial" and result.degraded_reasons == ("unreadable_answer",)
    assert {item.index for item in result if item.fallback} == {2, 3}
    assert all(item.score is None for item in result)


@pytest.mark.parametrize("strategy", ["listwise", "pointwise", "pairwise", "setwise", "batch_score"])
def test_the_degraded_warning_quotes_no_answer_text(strategy: str, caplog: pytest.LogCaptureFixture) -> None:
    # An unreadable answer often echoes a document; the warning goes to server logs, which must
    # hold no document text (the HTTP service promises it). The answer stays in the diagnostics.
    echo = "Patient 4711, 63, was admitted with chest pain"
    docs = [f"{echo} on day {i}." for i in range(3)]
    backend = FakeBackend([f"The relevant one: {echo}."] * 10)
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = Reranker(strategy, backend).rerank(QUERY, docs)
    assert result.degraded and "unreadable_answer" in result.degraded_reasons
    (warning,) = warnings_of(caplog)
    assert "Patient" not in warning and "4711" not in warning, warning
    unreadable = [d for d in result.diagnostics if d.code.endswith(("_unparsed", "_input_order"))]
    assert unreadable and all("4711" in d.message for d in unreadable)
    assert f"first: {unreadable[0].code}, {len(unreadable[0].message)} characters" in warning


def test_the_degraded_warning_quotes_the_answer_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="llmrerank"):
        result = Reranker("listwise", FakeBackend(["I would rather not say."])).rerank(QUERY, DOCS)
    assert result.status == "fallback"
    (warning,) = warnings_of(caplog)
    assert "rather not" not in warning
    quoted = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "rather not" in r.getMessage()]
    assert len(quoted) == 1 and "fallback_input_order" in quoted[0]


def test_pointwise_failed_call_is_a_fallback_document(server: FakeLLMServer) -> None:
    def respond(request: ServerRequest) -> Reply | str:
        return Reply(status=500, text="boom") if "Bread" in request.user else judge(request)

    server.responder = respond
    result = Reranker(Pointwise(method="generate"), openai(server)).rerank(QUERY, DOCS)
    assert result.status == "partial" and result.degraded_reasons == ("call_failed",)
    assert result.indices[-1] == 2 and result[-1].fallback and result[-1].score is None
    assert all(not item.fallback and item.score is not None for item in result[:-1])


class Failing:
    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        raise RuntimeError("cross-encoder crashed")


class Reverse:
    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(-i) for i in range(len(pairs))]


def test_failed_prefilter_is_reported_and_its_leftovers_are_fallbacks() -> None:
    result = Reranker(
        Hybrid(cross_encoder=Failing(), keep=2, llm="listwise"), FakeBackend(respond=overlap_judge)
    ).rerank(QUERY, DOCS)
    assert result.degraded_reasons == ("prefilter_failed",) and result.status == "partial"
    assert {item.index for item in result if item.fallback} == {2, 3}


def test_hybrid_whose_llm_failed_keeps_real_cross_encoder_scores(server: FakeLLMServer) -> None:
    server.responder = Reply(status=503)
    result = Reranker(Hybrid(cross_encoder=Reverse(), keep=2, llm="listwise"), openai(server)).rerank(QUERY, DOCS)
    assert result.score_kind == "cross_encoder" and result.status == "fallback"
    assert [item.score for item in result] == [0.0, -1.0, -2.0, -3.0]


def test_deadline_is_a_reason(server: FakeLLMServer) -> None:
    server.responder = Reply(text="[1]", delay=2.0)
    result = Reranker("listwise", openai(server), deadline=0.3).rerank(QUERY, DOCS)
    assert result.degraded_reasons == ("deadline_exceeded",) and result.status == "fallback"
    assert result.usage.failed_calls <= result.usage.calls


def test_pairwise_unreadable_comparisons_give_no_score() -> None:
    result = Reranker(Pairwise(mode="all_pairs"), FakeBackend(respond=lambda p: "Both are fine.")).rerank(QUERY, DOCS)
    assert result.status == "fallback" and all(item.score is None for item in result)


# --- scores that mean something -------------------------------------------------------------------------


def test_first_token_listwise_reads_label_probabilities_from_openai_logprobs() -> None:
    def respond(request: ServerRequest) -> Reply:
        prompt = Prompt(system=request.system, user=request.user, choices=tuple("ABCD"))
        return Reply(text=judge(request).text, top_logprobs=overlap_logprobs(prompt))

    with FakeLLMServer(respond) as srv:
        result = Reranker(Listwise(method="first_token"), openai(srv)).rerank(QUERY, DOCS)
        (request,) = [r for r in srv.requests if r.method == "POST"]
    assert result.score_kind == "first_token" and result.status == "reranked"
    assert result.indices[:2] == [3, 1]
    scores = [item.score for item in result]
    assert all(s is not None and 0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert abs(sum(scores) - 1.0) < 1e-6  # type: ignore[arg-type]
    assert request.max_tokens == 1 and request.logprobs  # one output token per window
    assert "[A]" in request.user and "[1]" not in request.user


def test_first_token_without_logprobs_reads_the_letters_it_wrote() -> None:
    result = Reranker(Listwise(method="first_token"), FakeBackend(["[D] > [B] > [A] > [C]"])).rerank(QUERY, DOCS)
    assert result.indices == [3, 1, 0, 2] and result.score_kind == "rank"
    assert "no_logprobs" in [d.code for d in result.diagnostics]


def test_listwise_step_defaults_to_half_the_window() -> None:
    assert Listwise(window=5).step == 2 and Listwise().step == 10
    with pytest.raises(ConfigurationError):
        Listwise(method="first_token", window=27)


# --- min_score ----------------------------------------------------------------------------------------


def test_min_score_drops_what_the_model_rated_low_and_keeps_it_reachable() -> None:
    reranker = Reranker(Pointwise(method="generate"), FakeBackend(respond=overlap_judge), min_score=5)
    result = reranker.rerank(QUERY, DOCS)
    assert result.indices == [3, 1] and all(item.score is not None and item.score >= 5 for item in result)
    assert sorted(d.index for d in result.dropped) == [0, 2]
    assert [item.rank for item in result] == [1, 2]
    everything = reranker.rerank(QUERY, DOCS, min_score=0)
    assert len(everything) == 4 and not everything.dropped


def test_min_score_keeps_documents_nobody_scored() -> None:
    backend = FakeBackend(respond=lambda p: "no idea" if "Bread" in p.user else overlap_judge(p))
    result = Reranker(Pointwise(method="generate"), backend, min_score=5).rerank(QUERY, DOCS)
    assert 2 in result.indices and result[-1].fallback


@pytest.mark.parametrize("strategy", ["listwise", "pairwise", Hybrid(cross_encoder=Reverse(), llm="listwise")])
def test_min_score_needs_scores_on_a_fixed_scale(strategy: object) -> None:
    with pytest.raises(ConfigurationError, match="min_score needs 0-10 scores"):
        Reranker(strategy, FakeBackend(respond=overlap_judge), min_score=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="min_score"):
        Reranker(strategy, FakeBackend(respond=overlap_judge)).rerank(QUERY, DOCS, min_score=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 11, "5", float("nan")])
def test_min_score_range(value: object) -> None:
    with pytest.raises(ConfigurationError, match="min_score"):
        Reranker("pointwise", FakeBackend(), min_score=value)  # type: ignore[arg-type]


def test_summary_is_json_data() -> None:
    import json

    result = Reranker("listwise", FakeBackend(["nonsense"])).rerank(QUERY, DOCS)
    data = json.loads(json.dumps(result.summary()))
    assert data["status"] == "fallback" and data["degraded_reasons"] == ["unreadable_answer"]
    assert data["usage"]["calls"] == 1 and data["order"] == [0, 1, 2, 3]
    assert data["diagnostics"][0]["code"] == "fallback_input_order"


def test_listwise_answer_naming_few_documents_is_partial_not_reranked(caplog: pytest.LogCaptureFixture) -> None:
    # Measured on SmolLM2: answers like "[1]" for a window of 10 left 9 documents in input order while
    # the result said "reranked".
    docs = ["a dog", "a cat", "a bird", "a fish"]
    result = Reranker("listwise", FakeBackend(["[2]"])).rerank("pets", docs)
    assert result.status == "partial" and result.degraded_reasons == ("incomplete_answer",)
    assert result.indices == [1, 0, 2, 3]
    assert [item.fallback for item in result] == [False, True, True, True]
    (warning,) = warnings_of(caplog)
    assert "incomplete_answer" in warning and "named 1 of 4" in warning and "3 of 4 documents" in warning


def test_documents_left_out_by_one_window_and_placed_by_the_next_are_judged() -> None:
    docs = ["a dog", "a cat", "a bird", "a fish"]
    # Window of 3, step 1: documents 2-4 first (the answer names only document 2), then 1-3 in full.
    backend = FakeBackend(["[1]", "[3] > [2] > [1]"])
    result = Reranker(Listwise(window=3, step=1), backend).rerank("pets", docs)
    assert result.status == "partial" and result.degraded_reasons == ("incomplete_answer",)
    assert [(item.index, item.fallback) for item in result] == [(2, False), (1, False), (0, False), (3, True)]
