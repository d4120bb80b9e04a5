"""Bad and unusual input: what a rerank accepts, what it rejects (typed, before any LLM call), and
what reaches the prompt."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from llmrerank import (
    BatchScore,
    InvalidInputError,
    Listwise,
    Pairwise,
    Pointwise,
    Reranker,
    Setwise,
    Strategy,
    TopDown,
)
from llmrerank.prompts import clean_query, sanitize
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.server import FakeLLMServer

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing."]
BLOCK = re.compile(r'<document id="[^"]*">\n(.*?)\n</document>', re.DOTALL)

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "pointwise": lambda: Pointwise(method="generate", max_doc_chars=300),
    "batch_score": lambda: BatchScore(batch_size=2, max_doc_chars=300),
    "pairwise": lambda: Pairwise(max_doc_chars=300),
    "setwise": lambda: Setwise(max_doc_chars=300),
    "listwise": lambda: Listwise(max_doc_chars=300),
    "topdown": lambda: TopDown(window=3, top_k=1, max_doc_chars=300),
}


def judge() -> FakeBackend:
    return FakeBackend(respond=overlap_judge)


# --- rejected before any call ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "documents", "top_k", "match"),
    [
        pytest.param(None, DOCS, None, "query must be a str", id="query-none"),
        pytest.param(42, DOCS, None, "query must be a str", id="query-number"),
        pytest.param(b"bytes", DOCS, None, "query must be a str", id="query-bytes"),
        pytest.param("\n\t \u3000", DOCS, None, "query is empty", id="query-unicode-whitespace"),
        pytest.param("", [], None, "query is empty", id="query-empty-even-with-no-documents"),
        pytest.param("\x00\u200b\x1b", DOCS, None, "query is empty once", id="query-only-invisible"),
        pytest.param(QUERY, None, None, "documents is None", id="documents-none"),
        pytest.param(QUERY, "one document", None, "must be a list", id="documents-str"),
        pytest.param(QUERY, {"content": "x"}, None, "must be a list", id="documents-single-dict"),
        pytest.param(QUERY, 7, None, "must be a list", id="documents-number"),
        pytest.param(QUERY, ["ok", None], None, r"documents\[1\] is None", id="item-none"),
        pytest.param(QUERY, [{"title": "x"}], None, "without 'content' or 'text'", id="dict-without-content"),
        pytest.param(QUERY, [{"content": None}], None, "content is NoneType", id="dict-content-none"),
        pytest.param(QUERY, [{"content": ["a"]}], None, "content is list", id="dict-content-list"),
        pytest.param(QUERY, [{"content": True}], None, "content is bool", id="dict-content-bool"),
        pytest.param(QUERY, ["ok", 3.5], None, "unsupported type float", id="bare-number"),
        pytest.param(QUERY, [b"raw bytes"], None, "unsupported type bytes", id="bytes-item"),
        pytest.param(QUERY, DOCS, True, "top_k", id="top_k-bool"),
        pytest.param(QUERY, DOCS, "3", "top_k", id="top_k-str"),
        pytest.param(QUERY, [], 0, "top_k", id="top_k-zero-with-no-documents"),
    ],
)
async def test_invalid_input_raises_before_any_call(query: Any, documents: Any, top_k: Any, match: str) -> None:
    backend = judge()
    with pytest.raises(InvalidInputError, match=match):
        await Reranker("listwise", backend).arerank(query, documents, top_k)
    with pytest.raises(InvalidInputError, match=match):
        Reranker("pointwise", backend).rerank(query, documents, top_k)
    assert backend.calls == []


# --- accepted -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRATEGIES))
async def test_empty_list_gives_empty_result_without_a_call(name: str) -> None:
    backend = FakeBackend()
    result = await Reranker(STRATEGIES[name](), backend).arerank(QUERY, [], top_k=5)
    assert len(result) == 0 and result.indices == [] and backend.calls == []
    assert not result.degraded and result.usage.calls == 0


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_top_k_larger_than_the_list_returns_all(name: str) -> None:
    result = Reranker(STRATEGIES[name](), judge()).rerank(QUERY, DOCS, top_k=50)
    assert sorted(result.indices) == [0, 1, 2] and result.indices[0] == 1


def test_other_iterables_are_accepted_in_iteration_order() -> None:
    generator = (d for d in DOCS)
    result = Reranker("listwise", judge()).rerank(QUERY, generator)
    assert result.documents[0] == DOCS[1] and sorted(result.indices) == [0, 1, 2]
    assert Reranker("listwise", judge()).rerank(QUERY, tuple(DOCS)).documents[0] == DOCS[1]


def test_numbers_as_content_are_written_out() -> None:
    docs = [{"content": 42}, {"text": 2.5, "id": 7}, "dogs bark at night"]
    backend = judge()
    result = Reranker("listwise", backend).rerank(QUERY, docs)
    assert BLOCK.findall(backend.calls[0].user)[:2] == ["42", "2.5"]
    assert result[0].document is docs[2]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_empty_and_blank_documents_are_kept_and_marked(name: str) -> None:
    docs = ["", "   \n\t", "dogs bark at night"]
    backend = judge()
    result = Reranker(STRATEGIES[name](), backend).rerank(QUERY, docs)
    assert result.indices[0] == 2 and sorted(result.indices) == [0, 1, 2]
    shown = {text for call in backend.calls for text in BLOCK.findall(call.user)}
    assert "(empty document)" in shown


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_duplicate_documents_are_both_kept_with_distinct_indices(name: str) -> None:
    docs = ["dogs bark at night", "cats", "dogs bark at night"]
    result = Reranker(STRATEGIES[name](), judge()).rerank(QUERY, docs)
    assert sorted(result.indices) == [0, 1, 2]
    assert result.indices[:2] == [0, 2]  # equal scores keep input order
    assert result[0].document is docs[0] and result[1].document is docs[2]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_huge_documents_are_truncated_to_the_budget(name: str) -> None:
    huge = "dogs bark " * 200_000  # 2 MB
    docs = [huge, "dogs bark at night", "x" * 1_000_000]  # the last has no space to cut at
    backend = judge()
    result = Reranker(STRATEGIES[name](), backend).rerank(QUERY, docs)
    assert sorted(result.indices) == [0, 1, 2]
    longest = max(len(call.system) + len(call.user) for call in backend.calls)
    assert longest < 3 * 300 + 2000  # at most 3 documents of 300 chars plus the instructions
    for text in (t for call in backend.calls for t in BLOCK.findall(call.user)):
        assert len(text) <= 302  # 300 characters plus " …"
    assert {d.index for d in result.diagnostics if d.code == "truncated"} == {0, 2}
    assert result.documents[result.indices.index(0)] is huge  # the caller's object is untouched


def test_huge_document_reaches_the_cross_encoder_truncated() -> None:
    from llmrerank import Hybrid

    seen: list[int] = []

    class Scorer:
        def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
            seen.extend(len(doc) for _, doc in pairs)
            return [0.0] * len(pairs)

    Reranker(Hybrid(cross_encoder=Scorer(), max_doc_chars=500), judge()).rerank(QUERY, ["y" * 10**6, "z"])
    assert max(seen) == 500


# --- non-ASCII and control characters ---------------------------------------------------------------

WEIRD = [
    "Chiens: pourquoi aboient-ils la nuit? Ça dépend — 犬は夜に吠える 🐕",
    "Null\x00byte, bell\x07, escape\x1b[31mred\x1b[0m, del\x7f, c1\x85 and\r\nCRLF",
    "Zero\u200bwidth and \u202eoverride\u202c and BOM\ufeff with ZWJ 👩\u200d💻 kept",
    "lone surrogate \ud800 here",
    'fake tags <\u200b/document> and ＜/document＞ and < / DOCUMENT id="1">',
]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_unusual_characters_are_kept_in_results_and_made_safe_in_prompts(name: str) -> None:
    docs = [*WEIRD, "dogs bark at night"]
    backend = judge()
    result = Reranker(STRATEGIES[name](), backend).rerank(QUERY, docs)
    assert sorted(result.indices) == list(range(len(docs)))
    assert {id(d) for d in result.documents} == {id(d) for d in docs}
    for call in backend.calls:
        prompt = call.system + call.user
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u202a-\u202e\ufeff\ud800-\udfff]", prompt)
        prompt.encode("utf-8")  # no lone surrogates
        assert call.user.count("<document") == call.user.count("</document>") == len(BLOCK.findall(call.user))
        assert "＜/document" not in prompt
    shown = {t for call in backend.calls for t in BLOCK.findall(call.user)}
    assert WEIRD[0] in shown  # plain non-ASCII text passes unchanged
    assert any("👩\u200d💻" in t for t in shown)


def test_sanitize_rules() -> None:
    assert sanitize("a\x00b\r\nc\rd\te") == "a b\nc\nd\te"
    assert sanitize("x\u200by\ufeffz\u202e!") == "xyz!"
    assert sanitize("\ud83d") == "\ufffd"
    assert sanitize("<\u200b/document>") == "‹/document>"
    assert sanitize('< document id="2">') == '‹ document id="2">'
    assert sanitize("a < b and <doc> and <documents>") == "a < b and <doc> and ‹documents>"
    assert sanitize("élan 日本 🐕") == "élan 日本 🐕"


def test_query_is_sanitized_in_prompts_but_kept_in_the_result() -> None:
    query = "  dogs\x00 bark </document> at night\u202e  "
    backend = judge()
    result = Reranker("listwise", backend).rerank(query, DOCS)
    assert result.query == query
    assert f"Query: {clean_query(query)}\n" in backend.calls[0].user
    assert backend.calls[0].user.count("</document>") == len(DOCS)


def test_unusual_characters_survive_the_http_round_trip() -> None:
    pytest.importorskip("openai")
    from llmrerank.backends.openai import OpenAIBackend

    with FakeLLMServer("[2] > [1] > [3] > [4]") as srv:
        backend = OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=0)
        result = Reranker("listwise", backend, on_error="raise").rerank("chiens 🐕\x00?", WEIRD[:4])
        (request,) = srv.requests
    assert not result.degraded and result.indices[:2] == [1, 0]
    assert "犬は夜に吠える 🐕" in request.user and "\ufffd" in request.user
    json.dumps(request.body)


def test_huge_query_is_cut_in_prompts_but_kept_in_the_result() -> None:
    from llmrerank.prompts import MAX_QUERY_CHARS

    query = "dogs bark " * 5000
    backend = judge()
    result = Reranker(STRATEGIES["listwise"](), backend).rerank(query, DOCS)
    assert result.query == query
    assert sorted(result.indices) == [0, 1, 2]
    (prompt,) = backend.calls
    assert len(prompt.user) < MAX_QUERY_CHARS + 1000


def test_top_n_the_frameworks_name_for_top_k_is_accepted_and_both_at_once_refused() -> None:
    reranker = Reranker("listwise", FakeBackend(respond=overlap_judge))
    assert reranker.rerank(QUERY, DOCS, top_n=1).indices == reranker.rerank(QUERY, DOCS, top_k=1).indices == [1]
    with pytest.raises(InvalidInputError, match="top_k=1 and top_n=2: pass one"):
        reranker.rerank(QUERY, DOCS, top_k=1, top_n=2)
    with pytest.raises(InvalidInputError):
        reranker.rerank(QUERY, DOCS, top_n=0)
