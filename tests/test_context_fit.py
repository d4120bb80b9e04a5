"""Prompts fitted to a small context, against a loopback server that behaves like llama.cpp (issue 25, section 5).

``llama-server -c 4096 --parallel 4`` gives each request 1,024 tokens, reports that at ``GET /props``,
counts more tokens than four characters each on scientific text (its chat template too), refuses a
prompt of 1,024 tokens or more with its own 400, and tokenizes at ``POST /tokenize``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from llmrerank import BatchScore, Listwise, Pairwise, Pointwise, Reranker, Setwise
from llmrerank.errors import ContextLengthError
from llmrerank.prompts import estimate_tokens
from llmrerank.strategies import Strategy, TopDown
from testkit.server import FakeLLMServer, ServerRequest, overlap_responder, subword_tokens

pytest.importorskip("openai")

from llmrerank.backends.openai import OpenAIBackend

SLICE = Path(__file__).parent / "data" / "scifact-slice" / "corpus.jsonl"
QUERY = "Vitamin D supplements prevent bone fractures in older adults."
LLAMA_ERROR = re.compile(
    r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\), try increasing it"
)


def abstracts(count: int) -> list[str]:
    """The ``count`` longest SciFact abstracts of the committed slice (title and text)."""
    rows = [json.loads(line) for line in SLICE.read_text(encoding="utf-8").splitlines()]
    rows.sort(key=lambda row: -len(row["text"]))
    return [f"{row['title']}\n{row['text']}" for row in rows[:count]]


def llama(context: int = 4096, parallel: int = 4, **options: Any) -> FakeLLMServer:
    """``llama-server -c CONTEXT --parallel PARALLEL``."""
    return FakeLLMServer(overlap_responder, flavor="llama.cpp", context_tokens=context, parallel=parallel, **options)


MADE: list[OpenAIBackend] = []


@pytest.fixture(autouse=True)
def _close_backends() -> Any:
    yield
    while MADE:
        MADE.pop().close()


def backend(srv: FakeLLMServer, **options: Any) -> OpenAIBackend:
    """An OpenAIBackend for ``srv``, closed after the test."""
    made = OpenAIBackend("local", base_url=srv.base_url, api_key="none", **options)
    MADE.append(made)
    return made


def chats(srv: FakeLLMServer) -> list[ServerRequest]:
    return [r for r in srv.requests if r.path.startswith("/v1/chat/completions")]


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --- the loopback server behaves like llama.cpp ---------------------------------------------------------


def test_the_slots_share_the_context_and_props_reports_one_share() -> None:
    with llama(4096, 4) as srv:
        with urllib.request.urlopen(f"{srv.url}/props", timeout=5) as response:
            props = json.loads(response.read())
        auto = backend(srv, context_tokens="auto")
        Reranker(Pointwise(), auto).rerank(QUERY, ["a short abstract"])
    assert props["default_generation_settings"]["n_ctx"] == 1024 and props["total_slots"] == 4
    assert auto.context_tokens == 1024


def test_its_tokenizer_counts_more_than_four_characters_a_token_on_scientific_text() -> None:
    texts = abstracts(20)
    tokens = [len(subword_tokens(t)) for t in texts]
    assert all("".join(subword_tokens(t)) == t for t in texts)  # a tokenization: the pieces join back
    more = [n > estimate_tokens(t) for n, t in zip(tokens, texts, strict=True)]
    assert sum(more) >= 0.75 * len(texts) and sum(map(len, texts)) / sum(tokens) < 4.0


def test_its_context_error_is_llama_cpps_and_counts_the_chat_template() -> None:
    with llama(4096, 4) as srv:
        # the chat template's 15 tokens count: 1 (system) + 15 + 1008 = 1024 tokens are refused, 1023 are not
        words = ["x"] * 1008
        status, body = post(
            f"{srv.base_url}/chat/completions",
            {
                "model": "m",
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": " ".join(words)}],
            },
        )
        shorter = " ".join(words[:-1])
        ok, _ = post(
            f"{srv.base_url}/chat/completions",
            {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": shorter}]},
        )
    assert status == 400 and ok == 200
    found = LLAMA_ERROR.fullmatch(body["error"]["message"])
    assert found is not None and found.groups() == ("1024", "1024")
    assert body["error"]["type"] == "exceed_context_size_error" and body["error"]["n_ctx"] == 1024


@pytest.mark.parametrize("flavor", ["llama.cpp", "vllm"])
def test_tokenize_answers_in_each_servers_shape(flavor: str) -> None:
    text = abstracts(1)[0]
    with FakeLLMServer(flavor=flavor, context_tokens=8192, models=["m"]) as srv:  # type: ignore[arg-type]
        if flavor == "llama.cpp":
            status, body = post(f"{srv.url}/tokenize", {"content": text})
            pieces = post(f"{srv.url}/tokenize", {"content": "Vitamin D3", "with_pieces": True})[1]
            assert [p["piece"] for p in pieces["tokens"]] == ["Vitam", "in", " D", "3"]
            count = len(body["tokens"])
        else:
            status, body = post(f"{srv.url}/tokenize", {"model": "m", "prompt": text})
            assert body["max_model_len"] == 8192 and len(body["tokens"]) == body["count"]
            count = body["count"]
            chat = post(f"{srv.url}/tokenize", {"model": "m", "messages": [{"role": "user", "content": text}]})[1]
            assert chat["count"] > count  # the chat template's tokens count too
    assert status == 200 and count == len(subword_tokens(text))
    with FakeLLMServer(flavor="llama.cpp", tokenize=False) as srv:
        assert post(f"{srv.url}/tokenize", {"content": text})[0] == 404


# --- pairwise on a known context (the failure) ----------------------------------------------------


@pytest.mark.parametrize("tokenize", [True, False], ids=["server-tokenizer", "cautious-guess"])
def test_pairwise_fits_a_per_slot_context_without_a_single_400(tokenize: bool) -> None:
    """8 long SciFact abstracts, pairwise sort, 1,024 tokens a slot: main fitted at four characters a
    token and raised ContextLengthError ("request (1100 tokens) exceeds the available context size")."""
    docs = abstracts(8)
    with llama(4096, 4, tokenize=tokenize) as srv:
        auto = backend(srv, context_tokens="auto")
        result = Reranker(Pairwise(mode="sort"), auto).rerank(QUERY, docs)
        sent = chats(srv)
        counted = [srv.prompt_tokens(r) for r in sent]
        asked = [r.path for r in srv.requests if r.path == "/tokenize"]
    assert result.reranked and not result.degraded
    assert len(sent) == result.usage.calls and max(counted) < 1024  # no 400 at all
    assert "context_shrunk" not in {d.code for d in result.diagnostics}
    assert "context_fitted" in {d.code for d in result.diagnostics}
    assert asked == ["/tokenize"]  # one request per rerank; a server without one is asked once, then never


def test_dense_text_fits_by_the_servers_own_count() -> None:
    """Tables of figures are near one token a character for real tokenizers (every digit a token):
    the cautious guess of three characters a token does not hold, the server's count does."""
    table = " ".join(f"{k}.{k % 7}% (95% CI {k % 5}.1-{k % 9}.8; p={k % 3}.0{k % 4})" for k in range(60))
    docs = [f"Table {i}: {table}"[:1400] for i in range(3)]
    with llama(4096, 4) as srv:
        result = Reranker(Pairwise(), backend(srv, context_tokens="auto", logprobs=False)).rerank(QUERY, docs)
        sent = chats(srv)
    assert all(srv.prompt_tokens(r) < 1024 for r in sent) and result.usage.failed_calls == 0
    assert "context_shrunk" not in {d.code for d in result.diagnostics}
    with llama(4096, 4, tokenize=False) as srv, pytest.raises(ContextLengthError, match="exceeds the available"):
        Reranker(Pairwise(), backend(srv, context_tokens="auto", logprobs=False)).rerank(QUERY, docs)


def test_a_server_without_a_tokenizer_is_asked_once() -> None:
    with llama(4096, 4, tokenize=False) as srv:
        auto = backend(srv, context_tokens="auto")
        for _ in range(3):
            Reranker(Pointwise(), auto).rerank(QUERY, abstracts(2))
        asked = [r.path for r in srv.requests if r.path == "/tokenize"]
    assert asked == ["/tokenize"]


# --- one shorter resend for every strategy -----------------------------------------------------------------

STRATEGIES: list[Strategy] = [
    Pointwise(method="generate"),
    BatchScore(batch_size=2),
    Pairwise(mode="sort"),
    Pairwise(mode="all_pairs"),
    Setwise(set_size=2),
    Listwise(window=2),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: f"{s.name}-{getattr(s, 'mode', '')}")
def test_every_strategy_resends_a_prompt_too_long_with_its_documents_cut_to_half(strategy: Strategy) -> None:
    """Context unknown: the first prompts are too long; each is resent once, shorter (main raised
    ContextLengthError for pairwise, which had no shorter version)."""
    with llama(1400, 2) as srv:  # 700 tokens a slot: two abstracts (one for pointwise) do not fit, two halves do
        result = Reranker(strategy, backend(srv, logprobs=False)).rerank(QUERY, abstracts(4))
        sent = chats(srv)
    refused = [r for r in sent if srv.prompt_tokens(r) >= 700]
    shrunk = [d for d in result.diagnostics if d.code == "context_shrunk"]
    assert refused and shrunk and len(shrunk) == len(refused)
    assert all("exceeds the available context size (700 tokens)" in d.message for d in shrunk)
    assert result.usage.failed_calls == 0 and not result.degraded, result.degraded_reasons
    resent = [r for r in sent if srv.prompt_tokens(r) < 700]
    assert resent and all(r.user.count("…\n</document>") == r.user.count("<document ") for r in resent)


def test_a_context_error_that_half_the_documents_cannot_fix_still_raises() -> None:
    with llama(400, 1) as srv, pytest.raises(ContextLengthError, match="exceeds the available context size"):
        Reranker(Pairwise(), backend(srv, logprobs=False)).rerank(QUERY, abstracts(2))


# --- a context too small says so ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expect"),
    [
        (Listwise(), r"window of 2 documents, step 1, to fit 1024 tokens of context: 7 windows for 8 documents"),
        (BatchScore(), r"documents cut to \d{2,3} characters to fit 1024 tokens of context, under the 400"),
        (TopDown(window=8, top_k=2), r"window of 2 documents, step 2, to fit 1024 tokens of context: 4 windows"),
    ],
    ids=["listwise", "batch_score", "topdown"],
)
def test_a_context_too_small_for_the_strategy_is_said_plainly(
    strategy: Strategy, expect: str, caplog: pytest.LogCaptureFixture
) -> None:
    with llama(4096, 4) as srv, caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = Reranker(strategy, backend(srv, context_tokens="auto")).rerank(QUERY, abstracts(8))
    (small,) = [d for d in result.diagnostics if d.code == "context_too_small"]
    assert re.search(expect, small.message), small.message
    assert result.status == "partial" and result.degraded and "context_too_small" in result.degraded_reasons
    assert not any(item.fallback for item in result)  # the model placed every document, on too little
    (warning,) = [r.getMessage() for r in caplog.records if "degraded" in r.getMessage()]
    assert "context_too_small" in warning and "context too small: " in warning


def test_a_context_large_enough_is_no_degradation() -> None:
    with llama(32768, 4) as srv:  # 8,192 tokens a slot
        result = Reranker(Listwise(), backend(srv, context_tokens="auto")).rerank(QUERY, abstracts(8))
    assert result.reranked and "context_too_small" not in {d.code for d in result.diagnostics}
