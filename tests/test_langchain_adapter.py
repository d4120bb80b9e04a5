"""LLMRerankCompressor inside the real ContextualCompressionRetriever, against FakeLLMServer and fake chat models."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_classic")
pytest.importorskip("openai")

from adapter_support import BAD_OPTIONS, QUERY, TEXTS, assert_builds_its_reranker_lazily
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import SimpleChatModel
from langchain_core.language_models.fake_chat_models import FakeChatModel, FakeListChatModel
from langchain_core.retrievers import BaseRetriever

from langchain_llmrerank import ChatModelBackend, LLMRerankCompressor
from llmrerank import ConfigurationError, Fusion, MemoryCache, Pointwise, Prompt
from llmrerank.errors import InvalidInputError
from llmrerank.testing import FakeBackend, overlap_judge, overlap_likelihood
from testkit.server import FakeLLMServer


class FixedRetriever(BaseRetriever):
    """Returns the same documents for every query."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.docs


def make_docs() -> list[Document]:
    return [Document(page_content=t, metadata={"source": f"doc{i}"}, id=f"id{i}") for i, t in enumerate(TEXTS)]


@pytest.fixture
def server(openai_env_server: FakeLLMServer) -> FakeLLMServer:
    """The environment's OpenAI server (conftest), judging by word overlap."""
    return openai_env_server


def test_no_argument_compressor_reranks_through_the_retriever(server: FakeLLMServer) -> None:
    docs = make_docs()
    before = copy.deepcopy(docs)
    retriever = ContextualCompressionRetriever(
        base_compressor=LLMRerankCompressor(), base_retriever=FixedRetriever(docs=docs)
    )
    got = retriever.invoke(QUERY)
    assert [d.metadata["source"] for d in got] == ["doc1", "doc4", "doc2"]  # top_n defaults to 3
    assert [d.id for d in got] == ["id1", "id4", "id2"]
    # Listwise (the default for API models) orders without scoring: no score is made up from positions.
    assert [d.metadata["relevance_score"] for d in got] == [None, None, None]
    assert [d.metadata["rerank_rank"] for d in got] == [1, 2, 3]
    assert {d.metadata["rerank_score_kind"] for d in got} == {"rank"}
    assert not any(d.metadata["rerank_fallback"] or d.metadata["rerank_degraded"] for d in got)
    assert docs == before  # inputs not mutated
    assert all(d is not original for d in got for original in docs)
    (request,) = [r for r in server.requests if r.method == "POST"]  # one listwise call
    assert request.model == "gpt-4o-mini"
    assert QUERY in request.user


def test_top_n_none_and_model_shortcut(server: FakeLLMServer) -> None:
    compressor = LLMRerankCompressor(top_n=None, model="gpt-test", strategy="pointwise")
    got = compressor.compress_documents(make_docs(), QUERY)
    assert len(got) == len(TEXTS)
    assert [d.metadata["source"] for d in got][:2] == ["doc1", "doc4"]
    assert {r.model for r in server.requests} == {"gpt-test"}
    assert len(server.requests) == len(TEXTS)  # pointwise: one call a document


def test_sync_and_async_agree(server: FakeLLMServer) -> None:
    compressor = LLMRerankCompressor(strategy="pointwise", top_n=4)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=FixedRetriever(docs=make_docs())
    )
    sync = retriever.invoke(QUERY)
    asynchronous = asyncio.run(retriever.ainvoke(QUERY))
    again = retriever.invoke(QUERY)  # a second blocking call after the loop of the first closed
    assert sync == asynchronous == again
    assert len(sync) == 4


async def test_async_path_is_native(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    compressor = LLMRerankCompressor()

    def no_sync(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("acompress_documents must not fall back to the blocking method")

    monkeypatch.setattr(LLMRerankCompressor, "compress_documents", no_sync)
    got = await compressor.acompress_documents(make_docs(), QUERY)
    assert [d.metadata["source"] for d in got] == ["doc1", "doc4", "doc2"]


async def test_concurrent_async_calls_share_one_reranker(server: FakeLLMServer) -> None:
    compressor = LLMRerankCompressor(top_n=1)
    results = await asyncio.gather(*(compressor.acompress_documents(make_docs(), QUERY) for _ in range(5)))
    assert all(r[0].metadata["source"] == "doc1" for r in results)
    assert compressor.reranker is compressor.reranker


def test_empty_input_makes_no_request(server: FakeLLMServer) -> None:
    compressor = LLMRerankCompressor()
    assert compressor.compress_documents([], QUERY) == []
    assert asyncio.run(compressor.acompress_documents([], QUERY)) == []
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=FixedRetriever(docs=[]))
    assert retriever.invoke(QUERY) == []
    assert server.requests == []


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.retriever_runs: list[UUID] = []
        self.chat_starts: list[tuple[UUID | None, list[str]]] = []

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, **kwargs: Any) -> None:
        if kwargs.get("parent_run_id") is None:
            self.retriever_runs.append(run_id)

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self.chat_starts.append((parent_run_id, list(kwargs.get("tags") or [])))


def listwise_answer(messages: Any) -> str:
    system, user = messages[0].content, messages[1].content
    return overlap_judge(Prompt(system=system, user=user))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_chat_model_as_backend_gets_the_callbacks(mode: str) -> None:
    model = FakeListChatModel(responses=["[2] > [5] > [3] > [4] > [1]"])
    recorder = Recorder()
    retriever = ContextualCompressionRetriever(
        base_compressor=LLMRerankCompressor(backend=model, top_n=2), base_retriever=FixedRetriever(docs=make_docs())
    )
    config: Any = {"callbacks": [recorder]}
    got = retriever.invoke(QUERY, config) if mode == "sync" else asyncio.run(retriever.ainvoke(QUERY, config))
    assert [d.metadata["source"] for d in got] == ["doc1", "doc4"]
    assert [d.metadata["relevance_score"] for d in got] == [None, None]
    assert [d.metadata["rerank_rank"] for d in got] == [1, 2]
    (run_id,) = recorder.retriever_runs
    (start,) = recorder.chat_starts
    assert start[0] == run_id  # a child of the retriever's run, through the compressor's callbacks
    assert "llmrerank" in start[1]


def test_chat_model_pointwise_with_reasons_and_usage() -> None:
    answers = ["Score: 2\nReason: unrelated", "Score: 9\nReason: explains it", "Score: 5\nReason: partly"]
    model = FakeListChatModel(responses=answers)
    compressor = LLMRerankCompressor(backend=model, strategy=Pointwise(with_reason=True), top_n=2, max_concurrency=1)
    docs = make_docs()[:3]
    got = compressor.compress_documents(docs, QUERY)
    assert [d.metadata["source"] for d in got] == ["doc1", "doc2"]
    assert [d.metadata["relevance_score"] for d in got] == [9.0, 5.0]
    assert [d.metadata["relevance_reason"] for d in got] == ["explains it", "partly"]
    assert "relevance_reason" not in docs[1].metadata


def test_chat_model_backend_reads_text_and_usage() -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    reply = AIMessage(content="[1] > [2]", usage_metadata={"input_tokens": 11, "output_tokens": 3, "total_tokens": 14})
    backend = ChatModelBackend(GenericFakeChatModel(messages=iter([reply])))
    completion = asyncio.run(backend.generate(Prompt(system="s", user="u")))
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == ("[1] > [2]", 11, 3)
    assert not backend.supports_logprobs
    assert backend.preferred_strategy == "listwise"


def test_llmrerank_backend_and_options_pass_through() -> None:
    backend = FakeBackend(respond=overlap_judge)
    cache = MemoryCache()
    compressor = LLMRerankCompressor(
        backend=backend, strategy="listwise", domain="legal", system_prompt="You rank court filings.", cache=cache
    )
    first = compressor.compress_documents(make_docs(), QUERY)
    second = compressor.compress_documents(make_docs(), QUERY)
    assert first == second
    assert len(backend.calls) == 1  # the second answer came from the cache
    assert backend.calls[0].system.startswith("You rank court filings.")
    assert "legal" in backend.calls[0].system
    reranker = compressor.reranker
    assert reranker.backend is backend and reranker.domain == "legal" and reranker.cache is cache


@pytest.mark.parametrize("options", BAD_OPTIONS)
def test_bad_options_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LLMRerankCompressor(**options)


def test_model_without_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLMRerankCompressor(model="gpt-4o").compress_documents(make_docs(), QUERY)


def test_blocking_call_inside_a_running_loop() -> None:
    model = FakeListChatModel(responses=["[2] > [1]"])
    compressor = LLMRerankCompressor(backend=model, top_n=1)

    async def inside() -> list[Document]:
        return list(compressor.compress_documents(make_docs()[:2], QUERY))

    (doc,) = asyncio.run(inside())
    assert doc.metadata["source"] == "doc1"


def test_chat_openai_as_backend_sync_twice_then_async(server: FakeLLMServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    model = langchain_openai.ChatOpenAI(model="gpt-chat", base_url=server.base_url, api_key="test", max_retries=0)
    compressor = LLMRerankCompressor(backend=model, strategy="pointwise", top_n=2)
    results = [compressor.compress_documents(make_docs(), QUERY) for _ in range(2)]
    results.append(list(asyncio.run(compressor.acompress_documents(make_docs(), QUERY))))
    assert all([d.metadata["source"] for d in r] == ["doc1", "doc4"] for r in results)
    assert {r.model for r in server.requests} == {"gpt-chat"}
    assert len(server.requests) == 3 * len(TEXTS)


def test_copies_pickles_and_field_changes_rebuild_the_reranker() -> None:
    assert_builds_its_reranker_lazily(LLMRerankCompressor)


def test_fusion_reads_the_retrievers_score_from_metadata() -> None:
    docs = [Document(page_content=t, metadata={"score": float(len(TEXTS) - i)}) for i, t in enumerate(TEXTS)]
    backend = FakeBackend(likelihood=overlap_likelihood)
    alone = LLMRerankCompressor(backend=backend, strategy="query_likelihood", top_n=None, fusion=None)
    llm_only = alone.compress_documents(docs, QUERY)
    assert llm_only[0].page_content == TEXTS[1] and llm_only[0].metadata["score"] == len(TEXTS) - 1
    retriever_heavy = LLMRerankCompressor(
        backend=backend, strategy="query_likelihood", top_n=None, fusion=Fusion("zscore", weight=0.01)
    )
    fused = retriever_heavy.compress_documents(docs, QUERY)
    assert [d.page_content for d in fused] == TEXTS  # the retriever's order wins at weight 0.01
    assert asyncio.run(retriever_heavy.acompress_documents(docs, QUERY)) == fused
    keyed = [
        Document(page_content=t, metadata={"relevance_score": s}) for t, s in zip(TEXTS, [0, 0, 9, 0, 0], strict=True)
    ]
    assert retriever_heavy.compress_documents(keyed, QUERY)[0].page_content == TEXTS[2]
    with pytest.raises((ConfigurationError, ValueError)):
        LLMRerankCompressor(backend=backend, fusion="sum")


def test_top_k_llmreranks_own_name_is_accepted_for_top_n() -> None:
    compressor = LLMRerankCompressor(backend=FakeBackend(respond=overlap_judge), strategy="listwise", top_k=2)
    assert compressor.top_n == 2 and len(compressor.compress_documents(make_docs(), QUERY)) == 2


def test_the_offline_default_fuses_with_the_retrievers_order_when_no_score_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A vector-store retriever puts no score in the metadata; the local model's default (query
    # likelihood, min-max fusion) then fuses with the order the retriever returned: scores in [0, 1].
    from llmrerank import LocalBackend, Reranker
    from llmrerank.fusion import input_order_scores

    backend = FakeBackend(likelihood=overlap_likelihood, preferred_strategy="query_likelihood")
    backend.preferred_fusion = LocalBackend.preferred_fusion
    retriever = ContextualCompressionRetriever(
        base_compressor=LLMRerankCompressor(backend=backend, top_n=None),
        base_retriever=FixedRetriever(docs=make_docs()),
    )
    with caplog.at_level(logging.INFO, logger="llmrerank"):
        found = retriever.invoke(QUERY)
    assert "fusion skipped" not in caplog.text
    assert {d.metadata["rerank_score_kind"] for d in found} == {"fused"}
    assert all(0 <= d.metadata["relevance_score"] <= 1 for d in found)
    core = Reranker(backend=backend).rerank(QUERY, TEXTS, first_stage_scores=input_order_scores(len(TEXTS)))
    assert [d.page_content for d in found] == [TEXTS[i] for i in core.indices]
    assert [d.metadata["relevance_score"] for d in found] == pytest.approx([item.score for item in core])


# --- what the rerank did reaches LangChain users -------------------------------------------------------


class ResultRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, UUID | None]] = []
        self.retriever_runs: list[UUID] = []

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, **kwargs: Any) -> None:
        self.retriever_runs.append(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_whole_result_reaches_callbacks_as_a_custom_event(server: FakeLLMServer, mode: str) -> None:
    recorder = ResultRecorder()
    retriever = ContextualCompressionRetriever(
        base_compressor=LLMRerankCompressor(strategy="pointwise", top_n=2),
        base_retriever=FixedRetriever(docs=make_docs()),
    )
    config: Any = {"callbacks": [recorder]}
    got = retriever.invoke(QUERY, config) if mode == "sync" else asyncio.run(retriever.ainvoke(QUERY, config))
    ((name, data, run_id),) = recorder.events
    assert name == "llmrerank_result" and run_id == recorder.retriever_runs[0]
    assert data["status"] == "reranked" and data["usage"]["calls"] == len(TEXTS)
    assert data["usage"]["prompt_tokens"] > 0 and data["score_kind"] == "logprob"
    assert [d.metadata["rerank_rank"] for d in got] == [1, 2]
    assert all(isinstance(d.metadata["relevance_score"], float) for d in got)


def test_rerank_returns_the_result_with_annotated_copies(server: FakeLLMServer) -> None:
    docs = make_docs()
    result = LLMRerankCompressor(strategy="pointwise", top_n=None).rerank(docs, QUERY)
    assert result.usage.calls == len(TEXTS) and result.status == "reranked"
    assert [d.metadata["source"] for d in result.documents][:2] == ["doc1", "doc4"]
    assert all(d.metadata["rerank_score_kind"] == "logprob" for d in result.documents)
    assert all(d.metadata == {"source": f"doc{i}"} for i, d in enumerate(docs))  # inputs untouched


def test_a_fallback_is_visible_in_the_metadata(server: FakeLLMServer) -> None:
    from testkit.server import Reply

    server.responder = Reply(status=503, text="overloaded upstream")
    compressor = LLMRerankCompressor(backend=None, top_n=None)
    compressor.reranker.backend.max_retries = 0  # type: ignore[attr-defined]
    got = compressor.compress_documents(make_docs(), QUERY)
    assert [d.metadata["source"] for d in got] == [f"doc{i}" for i in range(len(TEXTS))]
    assert all(d.metadata["rerank_fallback"] and d.metadata["rerank_degraded"] for d in got)
    assert all(d.metadata["relevance_score"] is None for d in got)


def test_min_score_filters_like_an_llm_chain_filter(server: FakeLLMServer) -> None:
    compressor = LLMRerankCompressor(strategy=Pointwise(method="generate"), top_n=None, min_score=5)
    got = compressor.compress_documents(make_docs(), QUERY)
    assert [d.metadata["source"] for d in got] == ["doc1", "doc4"]
    assert all(d.metadata["relevance_score"] >= 5 for d in got)
    with pytest.raises(ValueError, match="min_score needs 0-10 scores"):
        LLMRerankCompressor(strategy="listwise", min_score=5)


def test_permanent_errors_reach_the_caller(server: FakeLLMServer) -> None:
    from llmrerank.errors import AuthenticationError
    from testkit.server import Reply

    server.responder = Reply(status=401, text="Incorrect API key provided")
    retriever = ContextualCompressionRetriever(
        base_compressor=LLMRerankCompressor(), base_retriever=FixedRetriever(docs=make_docs())
    )
    with pytest.raises(AuthenticationError):
        retriever.invoke(QUERY)


class SlowSyncChatModel(SimpleChatModel):
    """A chat model with only a blocking ``_call`` (LangChain runs it in the default executor for ``ainvoke``)."""

    delay: float = 0.2
    answer: str = "5"
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def _llm_type(self) -> str:
        return "slow-sync"

    def _call(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
        with LOCK:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.delay)
        with LOCK:
            self.in_flight -= 1
        return self.answer


LOCK = threading.Lock()


def test_which_chat_models_have_their_own_async_path() -> None:
    from langchain_llmrerank.chat_backend import native_async

    assert not native_async(SlowSyncChatModel()) and not native_async(FakeListChatModel(responses=["x"]))
    assert native_async(FakeChatModel())  # its own _agenerate


def test_a_sync_only_chat_model_gets_max_concurrency_in_async_code() -> None:
    model = SlowSyncChatModel()
    compressor = LLMRerankCompressor(backend=model, strategy="pointwise", max_concurrency=12, top_n=None)
    docs = [Document(page_content=f"document {i}") for i in range(12)]

    async def run() -> Sequence[Document]:
        # The default executor as small as on a 2-core machine's smallest: it must not be the bound.
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(2))
        return await compressor.acompress_documents(docs, QUERY)

    got = asyncio.run(run())
    assert len(got) == 12 and all(d.metadata["relevance_score"] == 5.0 for d in got)
    assert model.max_in_flight >= 8


def test_plain_dicts_are_refused_before_any_call() -> None:
    backend = FakeBackend(respond=overlap_judge)
    compressor = LLMRerankCompressor(backend=backend)
    dicts = [{"page_content": t, "metadata": {}} for t in TEXTS]
    with pytest.raises(InvalidInputError, match=r"documents\[0\] is a dict, not a LangChain Document"):
        compressor.compress_documents(dicts, QUERY)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"documents\[1\] is a str"):
        asyncio.run(compressor.acompress_documents([make_docs()[0], "text"], QUERY))  # type: ignore[list-item]
    assert backend.calls == []
